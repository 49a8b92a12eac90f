"""Several processes on the CPU (gloo): the same run as one process with the same global batch.

Two processes with `--batch_size 2` must give the per-step losses, gradient norms, validation losses
and final weights of one process with `--batch_size 4` (1e-5 relative), with packing, with and
without gradient accumulation, under DDP and FSDP2, launched by `torchrun` and by `accelerate
launch`; only rank 0 writes; a checkpoint of the two-process run resumes to the same weights.
Under a token budget (`--batch_tokens`), two processes equal one accumulating two budgets.
On the tiny Qwen2 with a 1k vocabulary (tiny_qwen_1k_dir): these check mechanics, not what is learned.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, assert_error, built_once, cli, write_jsonl
from safetensors.torch import load_file

RECORDS = 17  # 4 held out, 13 trained: the last global batch of 4 leaves the second rank a stand-in


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    lines = (ROOT / "data" / "training.jsonl").read_text().splitlines()[:RECORDS]
    return write_jsonl(tmp_path_factory.mktemp("dist-data") / "data.jsonl", [json.loads(line) for line in lines])


def options(data, model_dir, cache_dir, out, batch_size, *extra) -> list[str]:
    return ["--data_path", str(data), "--model_name", str(model_dir), "--cache_dir", str(cache_dir),
            "--output_dir", str(out), "--batch_size", str(batch_size), "--epochs", "1", "--lr", "1e-3",
            "--eval_split", "0.25", "--eval_steps", "2", "--log_steps", "1", "--save_steps", "2",
            "--warmup_ratio", "0", "--sample_prompts", "0", *map(str, extra)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data, tiny_qwen_1k_dir, cache_dir):
    """The one-process run with the given options, run once for all workers (DDP and accelerate share it)."""
    def run(batch_size, *extra):
        def build(directory):
            code, output = cli(*options(data, tiny_qwen_1k_dir, cache_dir, directory / "out", batch_size, *extra))
            assert code == 0, output[-3000:]
        name = "one-process" + "".join(f"_{part}" for part in (batch_size, *extra)).replace("--", "")
        return built_once(tmp_path_factory, name, build) / "out"
    return run


def launch(launcher: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--main_process_port", "29517", "--mixed_precision", "no",
                   "--dynamo_backend", "no"]
    return subprocess.run([*command, "train.py", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=400)


def entries(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(out, reference):
    mine, theirs = entries(out), entries(reference)
    assert [(e["type"], e["step"]) for e in mine] == [(e["type"], e["step"]) for e in theirs]
    for a, b in zip(mine, theirs):
        for key, tolerance in (("loss", 1e-5), ("eval_loss", 1e-5), ("lr", 1e-9), ("grad_norm", 1e-4)):
            if key in b:  # the norm sums squares shard by shard under FSDP: a little more rounding
                assert a[key] == pytest.approx(b[key], rel=tolerance, abs=1e-9), (key, a, b)
    for name in ("epoch_1", "best_model"):  # relative to the whole model: Adam makes tiny biases jitter alone
        got, want = load_file(out / name / "model.safetensors"), load_file(reference / name / "model.safetensors")
        difference = sum(float((got[k] - w).square().sum()) for k, w in want.items()) ** 0.5
        assert difference <= 1e-5 * sum(float(w.square().sum()) for w in want.values()) ** 0.5, name
        assert max(float((got[k] - w).abs().max()) for k, w in want.items()) < 1e-5, name


def outputs(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("launcher, extra", [
    ("torchrun", []),
    ("torchrun", ["--grad_accum_steps", "2"]),
    ("torchrun", ["--grad_accum_steps", "2", "--distributed", "fsdp"]),
    ("accelerate", []),
], ids=["ddp", "ddp-accumulation", "fsdp-accumulation", "accelerate-ddp"])
@pytest.mark.slow(seconds=15)
def test_two_processes_equal_one_with_twice_the_batch(tmp_path, data, tiny_qwen_1k_dir, cache_dir, one_process,
                                                     launcher, extra):
    reference = one_process(4, *extra)
    out = tmp_path / "two"
    result = launch(launcher, options(data, tiny_qwen_1k_dir, cache_dir, out, 2, *extra))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert_same_run(out, reference)
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["processes"] == 2 and config["batch_size"] == 2
    # Only rank 0 writes: the same files as one process, each log line once.
    assert outputs(out) == outputs(reference)
    assert len(entries(out)) == len(set(json.dumps(e, sort_keys=True) for e in entries(out)))
    assert (result.stdout + result.stderr).count("Model: ") == 1


@pytest.mark.slow(seconds=12)
def test_two_processes_with_a_token_budget_equal_one_accumulating_two_budgets(tmp_path, data, tiny_qwen_1k_dir,
                                                                             cache_dir, one_process):
    """A global batch under --batch_tokens is one budget per process: the same update as one process
    accumulating as many budgets, micro-batch for micro-batch."""
    budget = ["--batch_tokens", "256", "--max_length", "256"]
    reference = one_process(1, *budget, "--grad_accum_steps", "2")
    out = tmp_path / "two"
    result = launch("torchrun", options(data, tiny_qwen_1k_dir, cache_dir, out, 1, *budget))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert_same_run(out, reference)
    assert len([e for e in entries(out) if e["type"] == "train"]) >= 2


@pytest.mark.slow(seconds=28)
def test_a_two_process_checkpoint_loads_and_resumes_to_the_same_weights(tmp_path, data, tiny_qwen_1k_dir, cache_dir):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "run"
    args = options(data, tiny_qwen_1k_dir, cache_dir, out, 2, "--distributed", "fsdp")
    assert launch("torchrun", args).returncode == 0
    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    final = load_file(out / "epoch_1" / "model.safetensors")
    for path in out.iterdir():  # back to the state right after checkpoint-2
        if path.name not in ("checkpoint-2", "run.json", "train_config.json", "metrics.jsonl"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = launch("torchrun", [*args, "--resume_from_checkpoint", "auto"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    resumed = load_file(out / "epoch_1" / "model.safetensors")
    assert all(torch.allclose(resumed[k], final[k], rtol=1e-5, atol=1e-7) for k in final)
    one = launch_single_resume_refused(out, args)
    assert "processes 2 -> 1" in one


def launch_single_resume_refused(out, args) -> str:
    """Resuming a two-process checkpoint in one process is refused: the global batch would change."""
    return assert_error(cli(*args, "--resume_from_checkpoint", "auto"), r"different inputs: processes 2 -> 1", 1)


def test_a_sharded_gzipped_data_directory_trains_and_names_the_shard_of_a_bad_line(tmp_path, data, tiny_qwen_1k_dir,
                                                                                  cache_dir):
    shards = tmp_path / "shards"
    shards.mkdir()
    lines = data.read_text().splitlines()
    for index, part in enumerate((lines[:9], lines[9:])):
        with gzip.open(shards / f"part-{index}.jsonl.gz", "wt") as handle:
            handle.write("\n".join(part) + "\n")
    code, output = cli(*options(shards, tiny_qwen_1k_dir, cache_dir, tmp_path / "out", 4))
    assert code == 0, output[-3000:]
    assert f"Records: {RECORDS}" in output
    with gzip.open(shards / "part-1.jsonl.gz", "at") as handle:
        handle.write('{"input": "Hi", "output": 7}\n')
    assert_error(cli(*options(shards, tiny_qwen_1k_dir, cache_dir, tmp_path / "out2", 4)),
                 rf"part-1.jsonl.gz line {len(lines) - 9 + 1}: 'output' must be a string", 2)
    pattern = tmp_path / "shards" / "part-*.jsonl.gz"
    assert_error(cli(*options(pattern, tiny_qwen_1k_dir, cache_dir, tmp_path / "out3", 4)), r"part-1.jsonl.gz line", 2)


def child_with_rank(parent: int, rank: int) -> int | None:
    """The pid of the launcher's worker with the given RANK (read from /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry)
    return None


@pytest.mark.slow(seconds=14)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_one_rank_stops_all_with_one_checkpoint(tmp_path, data, tiny_qwen_1k_dir, cache_dir):
    import signal
    import time
    out = tmp_path / "run"
    args = options(data, tiny_qwen_1k_dir, cache_dir, out, 2, "--epochs", "40", "--save_steps", "0",
                   "--eval_steps", "0")
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()) and time.time() < deadline:
        time.sleep(0.2)
    rank1 = child_with_rank(process.pid, 1)
    assert rank1 is not None
    os.kill(rank1, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and not (out / "epoch_40").exists()
    assert "To resume: python train.py" in stderr and checkpoints[0] in stderr
    assert json.loads((out / "summary.json").read_text())["stopped"] == "SIGTERM"
