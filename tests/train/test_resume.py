"""Runs that survive: exact resume after SIGTERM, SIGKILL during a save, rotation, bad numbers, early stopping.

On the tiny Qwen2 with a 1k vocabulary (tiny_qwen_1k_dir): these check mechanics, not what is learned.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from conftest import ROOT, make_config, sample_data
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.config import TrainConfig, option
from core.errors import CheckpointError, TrainingStopped
from core.train.checkpoint import checkpoint_bytes, latest_checkpoint, rotate_checkpoints
from core.train.run_setup import setup
from core.trainer import fit

QUIET = dict(log=lambda *_: None)


RESUMABLE = dict(epochs=2, batch_size=2, grad_accum_steps=2, lr=2e-3, log_steps=1, eval_steps=3, save_steps=4,
                 eval_split=0.2, warmup_ratio=0.2)


def config_for(tmp_path, model_dir, cache_dir, **overrides):
    """A run with accumulation, two epochs, evaluations and checkpoints: the shape resume must survive."""
    return make_config(tmp_path, model_dir, cache_dir, **{**RESUMABLE, **overrides})


def metrics(out):
    """Logged losses, learning rates, gradient norms and validation losses (timings left out)."""
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "tokens_per_sec"} for e in entries]


def assert_same_outputs(out, reference):
    """The same logged figures, and bit-identical weights in epoch_2/ and best_model/."""
    assert metrics(out) == metrics(reference)
    for name in ("epoch_2", "best_model"):
        mine, theirs = load_file(out / name / "model.safetensors"), load_file(reference / name / "model.safetensors")
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name


def run_to_end(config, on_event=None):
    run = setup(config, **QUIET)
    if on_event is not None:
        run.on_event = on_event
    return fit(run, **QUIET)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_qwen_1k_dir, cache_dir):
    tmp = tmp_path_factory.mktemp("reference")
    sample_data(tmp, 40)
    config = config_for(tmp, tiny_qwen_1k_dir, cache_dir)
    run_to_end(config)
    return tmp / "out"


def interrupt_during_step(step: int, micro_batch: int):
    """An observer that delivers a real SIGTERM to this process during one micro-batch of a given step."""
    def on_event(name, run, index=None, **details):
        if name == "micro_batch" and run.state.step + 1 == step and index + 1 == micro_batch:
            os.kill(os.getpid(), signal.SIGTERM)
    return on_event


def interrupt_after_save(name: str):
    """An observer that delivers a real SIGTERM right after a given checkpoint has been written."""
    fired = []

    def on_event(event, run, path=None, **details):
        if event == "saved" and path.name == name and not fired:
            fired.append(path)
            os.kill(os.getpid(), signal.SIGTERM)
    return on_event


@pytest.mark.parametrize("where, step", [("micro-batch 2", 6), ("after checkpoint-4", 4), ("micro-batch 1", 9)],
                         ids=["during-accumulation", "right-after-checkpoint", "second-epoch"])
def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path, tiny_qwen_1k_dir, cache_dir, reference, where, step):
    sample_data(tmp_path, 40)
    config = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir)
    observer = (interrupt_after_save(where.split()[-1]) if where.startswith("after")
                else interrupt_during_step(step, int(where.split()[-1])))
    with pytest.raises(TrainingStopped) as stopped:
        run_to_end(config, observer)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    if where.startswith("after"):  # checkpoint-4 is written while training goes on: the stop comes when it is done
        step = max(step, int(stopped.value.checkpoint.name.split("-")[1]))
    assert stopped.value.checkpoint == tmp_path / "out" / f"checkpoint-{step}"
    resumed = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, resume_from_checkpoint="auto")
    run = setup(resumed, **QUIET)
    assert run.state.step == step
    fit(run, **QUIET)
    assert_same_outputs(tmp_path / "out", reference)


def test_token_budget_batches_resume_exactly(tmp_path, tiny_qwen_1k_dir, cache_dir):
    budget = dict(batch_tokens=256, max_length=256)
    (tmp_path / "reference").mkdir()
    sample_data(tmp_path / "reference", 40)
    steps = run_to_end(config_for(tmp_path / "reference", tiny_qwen_1k_dir, cache_dir, **budget))["steps"]
    sample_data(tmp_path, 40)
    with pytest.raises(TrainingStopped):
        run_to_end(config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, **budget), interrupt_during_step(steps - 1, 2))
    resumed = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, resume_from_checkpoint="auto", **budget)
    fit(setup(resumed, **QUIET), **QUIET)
    assert_same_outputs(tmp_path / "out", tmp_path / "reference" / "out")


def test_a_disk_too_small_for_the_kept_checkpoints_is_warned_about_at_the_start(tmp_path, tiny_qwen_dir, cache_dir,
                                                                               monkeypatch):
    """On the real vocabulary: a checkpoint's tensors must dwarf its file headers for the 2% estimate."""
    config = make_config(tmp_path, tiny_qwen_dir, cache_dir, max_steps=2, save_steps=2)
    run = setup(config, **QUIET)
    fit(run, **QUIET)
    per_checkpoint, best_model = checkpoint_bytes(run.prepared.model, lora=False)
    out = tmp_path / "out"
    written = sum((out / "checkpoint-2" / name).stat().st_size for name in ("model.safetensors", "training_state.pt"))
    assert written == pytest.approx(per_checkpoint, rel=0.02)  # the estimate is what a checkpoint's tensors take
    assert (out / "best_model" / "model.safetensors").stat().st_size == pytest.approx(best_model, rel=0.02)

    def free(megabytes):
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=megabytes * 10**6))
    lines = []
    free(1)  # 2 steps with a checkpoint each: 2 checkpoints and best_model/ (the epoch does not end)
    setup(make_config(tmp_path, tiny_qwen_dir, cache_dir, max_steps=2, save_steps=1, overwrite_output_dir=True),
          log=lines.append)
    (warning,) = [line for line in lines if line.startswith("Warning: this run's checkpoints need")]
    assert "2 checkpoint-N/ and 0 epoch_N/" in warning and "--save_total_limit" in warning
    lines.clear()
    free(4 * per_checkpoint // 10**6 + 2 * best_model // 10**6 + 10)
    setup(make_config(tmp_path, tiny_qwen_dir, cache_dir, max_steps=2, save_steps=1, overwrite_output_dir=True),
          log=lines.append)
    assert not [line for line in lines if line.startswith("Warning")]


@pytest.mark.slow(seconds=10)
def test_sigkill_during_a_save_leaves_the_previous_checkpoint(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 40)
    out = tmp_path / "out"
    script = textwrap.dedent("""
        import os, signal, sys
        import core.train.checkpoint as ckpt
        original = ckpt.torch.save
        def dying_save(obj, path, *a, **k):
            if "checkpoint-4" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)  # model files are written, the state is not
            return original(obj, path, *a, **k)
        ckpt.torch.save = dying_save
        import train
        sys.exit(train.main(sys.argv[1:]))
    """)
    args = ["--sample_prompts", "0", "--data_path", str(tmp_path / "data.jsonl"), "--model_name", str(tiny_qwen_1k_dir),
            "--cache_dir", str(cache_dir), "--output_dir", str(out), "--save_steps", "2", "--batch_size", "2",
            "--epochs", "1"]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == -signal.SIGKILL
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".checkpoint-4")]
    assert leftovers and not (out / "checkpoint-4").exists()
    assert latest_checkpoint(out).path == out / "checkpoint-2"
    AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    resumed = subprocess.run([sys.executable, "train.py", *args, "--resume_from_checkpoint", "auto"],
                             capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert (out / "checkpoint-4").is_dir()


def test_save_total_limit_keeps_newest_and_protected(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 40)
    config = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, save_steps=1, save_total_limit=2, epochs=1)
    summary = run_to_end(config)
    out = tmp_path / "out"
    kept = {p.name for p in out.glob("checkpoint-*")}
    best = json.loads((out / "best_model" / "best.json").read_text())["step"]
    last = summary["steps"]
    assert kept == {f"checkpoint-{last - 1}", f"checkpoint-{last}", f"checkpoint-{best}"}
    # The protection rule on its own: the best model's source and the resumed-from checkpoint survive.
    for step in range(1, 7):
        (tmp_path / "rot" / f"checkpoint-{step}").mkdir(parents=True)
    rotate_checkpoints(tmp_path / "rot", 2, {tmp_path / "rot" / "checkpoint-1", tmp_path / "rot" / "checkpoint-3"})
    assert sorted(p.name for p in (tmp_path / "rot").iterdir()) == \
        ["checkpoint-1", "checkpoint-3", "checkpoint-5", "checkpoint-6"]


def nan_at(model, steps_to_poison):
    """Make the embedding output NaN during the given training steps (counted by forward calls in train mode)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] in steps_to_poison or "all" in steps_to_poison:
                return output * float("nan")
        return output

    return model.get_input_embeddings().register_forward_hook(hook)


def test_nan_loss_is_skipped_and_counted(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 40)
    run = setup(config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, grad_accum_steps=1, epochs=1), **QUIET)
    nan_at(run.prepared.model, {3})
    summary = fit(run, **QUIET)
    assert summary["bad_steps_skipped"] == 1 and summary["stopped"] == "completed"
    skipped = [e for e in metrics(tmp_path / "out") if e["type"] == "skipped"]
    assert [e["step"] for e in skipped] == [3]
    assert all(torch.isfinite(p).all() for p in run.prepared.model.parameters())


def test_repeated_nans_stop_the_run_with_the_step_and_lr(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 40)
    run = setup(config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, grad_accum_steps=1, max_bad_steps=3), **QUIET)
    nan_at(run.prepared.model, {"all"})
    with pytest.raises(TrainingStopped, match=r"3 non-finite losses or gradients in a row, the last at step 3 "
                                              r"\(learning rate [0-9.e-]+\)"):
        fit(run, **QUIET)


def test_early_stopping_ends_at_the_expected_evaluation(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 40)
    config = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, eval_steps=1, early_stopping_patience=2,
                        early_stopping_threshold=100.0, epochs=3)
    summary = run_to_end(config)
    assert summary["stopped"] == "early_stopping" and summary["steps"] == 3
    assert json.loads((tmp_path / "out" / "best_model" / "best.json").read_text())["step"] == 1
    assert summary["best_step"] == 1


def test_resume_with_a_different_data_file_is_refused(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 40)
    run_to_end(config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, epochs=1, max_steps=4))
    sample_data(tmp_path, 41)
    resumed = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, epochs=1, max_steps=4, resume_from_checkpoint="auto")
    with pytest.raises(CheckpointError, match=r"different inputs: data file .*--force_resume"):
        setup(resumed, **QUIET)
    forced = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, epochs=1, max_steps=4, resume_from_checkpoint="auto",
                        force_resume=True)  # a new request: a validated one is fixed
    assert setup(forced, **QUIET).state.step == 4


def test_a_write_error_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, tiny_qwen_1k_dir, cache_dir,
                                                                       monkeypatch):
    import errno

    from core.train import checkpoint as ckpt
    sample_data(tmp_path, 40)
    run = setup(config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, save_steps=2, eval_steps=0), **QUIET)
    original = ckpt.torch.save

    def full_disk(obj, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write .*checkpoint-4: No space left on device; "
                                              r"earlier checkpoints are intact"):
        fit(run, **QUIET)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    assert latest_checkpoint(out).path == out / "checkpoint-2"


@pytest.mark.slow(seconds=13)
def test_sigterm_on_the_command_line_prints_the_resume_command(tmp_path, tiny_qwen_1k_dir, cache_dir):
    import shlex
    import time
    sample_data(tmp_path, 40)
    out = tmp_path / "out"
    args = ["--sample_prompts", "0", "--data_path", str(tmp_path / "data.jsonl"), "--model_name", str(tiny_qwen_1k_dir),
            "--cache_dir", str(cache_dir), "--output_dir", str(out), "--batch_size", "2", "--epochs", "2",
            "--log_steps", "1"]
    process = subprocess.Popen([sys.executable, "train.py", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    command = next(line for line in stderr.splitlines() if line.startswith("To resume: "))
    resume = shlex.split(command.removeprefix("To resume: python train.py "))
    assert resume[:-2] == args and resume[-2] == "--resume_from_checkpoint"
    assert latest_checkpoint(out).path.samefile(resume[-1])
    finished = subprocess.run([sys.executable, "train.py", *resume], capture_output=True, text=True, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-1500:]
    assert (out / "epoch_2").is_dir()


@dataclass
class ConfigWithFlavour(TrainConfig):
    flavour: str = option("plain", "a throwaway option that changes the run", changes_run=True)


def test_a_new_option_marked_as_changing_the_run_is_checked_on_resume(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 40)
    base = config_for(tmp_path, tiny_qwen_1k_dir, cache_dir, epochs=1, max_steps=2, save_steps=2,
                      eval_steps=0).to_dict()
    run_to_end(ConfigWithFlavour(**base, flavour="plain"))
    resumed = {**base, "resume_from_checkpoint": "auto"}
    with pytest.raises(CheckpointError, match=r"different inputs: --flavour 'plain' -> 'spicy'"):
        setup(ConfigWithFlavour(**resumed, flavour="spicy"), **QUIET)
    assert setup(ConfigWithFlavour(**{**resumed, "log_steps": 7}, flavour="plain"), **QUIET).state.step == 2
