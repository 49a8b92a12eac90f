"""One prepared, time-capped GPU benchmark: every arm in its own child process, one JSON line per arm as it ends.

  bash bench/gpu.sh            # one GPU, under 8 minutes: random Qwen2.5-0.5B-sized model, bf16 autocast
  bash bench/gpu.sh --smoke    # every arm on the CPU with a 2-layer model, fp32 (TRL arms skipped without trl)

The smoke run checks that every arm runs, in under a minute on two cores: its model has a 1,000-token
Qwen-style vocabulary (trained on its records; the real one's 151k-row head would dominate), its arms take
about a second of steps each, and they share one child process (imports once; its memory figures are
the shared process's). It exits with 1 when an arm fails.

Arms (each capped: `--arm_seconds` of timed steps, and killed at `--arm_timeout`):
  matmul          the bf16 (GPU) or fp32 (CPU) matmul peak, measured in this run (bench_vs_trl.matmul_rate)
  project_b4      the project at batch 4 (--batch_tokens 0)
  project_16k/32k/64k   the project with micro-batches filled to that many tokens (a sixteenth in --smoke)
  trl_shipped     TRL's SFTTrainer as shipped at batch 4 (bench_vs_trl.trl_worker)
  trl_best        TRL at its best: padding_free, use_liger_kernel (when it imports), FlashAttention-2 when
                  it imports (else SDPA), as many sequences per step as the project's best budget holds
  parity          the loss of one identical batch through both (bench_vs_trl.parity_worker)
  qlora           a short --lora --load_in_4bit run (CUDA with bitsandbytes; --lora alone elsewhere, said so)
  checkpoint      a checkpoint written synchronously and through core.train.checkpoint_writer, read back
The project arms report tokens/s, model FLOP/s as a share of the matmul peak, peak memory and the syncs of one
profiled step (ops that read a device value on the host, and CUDA synchronisations). FLOPs, timing and
summaries are bench_vs_trl's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's core/, not an installed one
import bench_vs_trl as vs  # noqa: E402

ARMS = ("matmul", "project_b4", "project_16k", "project_32k", "project_64k", "trl_shipped", "trl_best", "parity",
        "qlora", "checkpoint")
BUDGETS = {"project_16k": 16384, "project_32k": 32768, "project_64k": 65536}
# profiler event names that make the host wait for the device (aten::item is counted by the _local_scalar_dense
# under it; on the CPU some kernels read scalars inside C++, so the CPU count is higher than a GPU's would be)
SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize",
               "cudaDeviceSynchronize", "cudaEventSynchronize")


def small_qwen(directory: Path, data: Path) -> Path:
    """A random 2-layer Qwen2 on a 1,000-token Qwen-style tokenizer trained on `data`, with the real Qwen
    special tokens and template (the smoke run's model)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    qwen = AutoTokenizer.from_pretrained(vs.package_file(*vs.QWEN_TOKENIZER))
    tokenizer = qwen.train_new_from_iterator(data.read_text().splitlines(), vocab_size=1000)
    tokenizer.chat_template = vs.package_file(*vs.QWEN_TEMPLATE).read_text()
    end = tokenizer.convert_tokens_to_ids(vs.END_OF_TURN)
    torch.manual_seed(vs.SEED)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=True, eos_token_id=end,
                                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None))
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def project_config(args, name: str, **overrides):
    from core.config import TrainConfig
    work = Path(args.work_dir)
    options = dict(data_path=args.data, model_name=args.model_dir, output_dir=str(work / name), epochs=1,
                   batch_size=args.batch_size, batch_tokens=0, max_length=args.max_length, lr=args.lr,
                   eval_split=0.0, save_steps=0, log_steps=10**9, cache_dir=str(work / "project-cache"),
                   device=args.device, precision="bf16" if args.device == "cuda" else "fp32", seed=vs.SEED,
                   sample_prompts=0, report=False, overwrite_output_dir=True)
    config = TrainConfig(**{**options, **overrides})
    config.validate()
    return config


def syncs_of_one_step(run, batch, device: str) -> int:
    """Host-waits-for-device events in one profiled optimizer step."""
    from torch.profiler import ProfilerActivity, profile

    from core.train.step import train_step
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        train_step(run, [batch])
    counts = {e.key: e.count for e in prof.key_averages()}
    return sum(counts.get(name, 0) for name in SYNC_EVENTS)


def project_steps(args, name: str, **overrides) -> dict:
    """Train the project for at most `--arm_seconds` of steps; per-step records as bench_vs_trl keeps them."""
    import torch

    from core.train.run_setup import setup
    from core.train.step import train_batches, train_step
    started = time.perf_counter()
    run = setup(project_config(args, name, **overrides), log=lambda m: print(m, file=sys.stderr))
    setup_s = time.perf_counter() - started
    dims = vs.model_dims(run.prepared.model)
    batches, steps, began = train_batches(run, epoch=0), [], time.perf_counter()
    for batch in batches[:-1]:  # the last one is profiled
        vs.synchronize(args.device)
        clock = vs.clock()
        result = train_step(run, [batch])
        loss, trained = result.loss, result.count  # reading them waits for the device, as the clock needs
        vs.synchronize(args.device)
        lengths = run.data.sequences.lengths[batch].tolist()
        steps.append(vs.step_record(dims, clock, vs.clock(), lengths, trained, sum(lengths), loss))
        if time.perf_counter() - began > args.arm_seconds and len(steps) > args.skip_steps + 1:
            break
    syncs = syncs_of_one_step(run, batches[-1], args.device) if len(batches) > 1 else None
    return {"setup_s": setup_s, "steps": steps, "matmul_at_start": 0.0, "threads": torch.get_num_threads(),
            "syncs_per_step": syncs, "patches": run.prepared.patches, **vs.memory_report(args.device)}


def trl_best_worker(args) -> dict:
    """TRL with everything it offers for speed, at the project's best budget in sequences per step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    attention = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation=attention)
    dataset = vs.prompt_completion_dataset(args.data, tokenizer)
    per_step = max(1, args.best_tokens // max(1, args.mean_length))
    config = vs.trl_config(argparse.Namespace(**{**vars(args), "batch_size": per_step}), Path(args.work_dir) / "trl",
                           math.ceil(len(dataset) / per_step), bf16=args.device == "cuda")
    config.padding_free = True
    config.max_length = None  # TRL enforces no max_length when padding-free without packing; it refuses one
    config.use_liger_kernel = importlib.util.find_spec("liger_kernel") is not None
    config.max_steps = args.trl_steps
    timer = vs.step_timer(args.device)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer])
    tokens, collate = [], trainer.data_collator

    def counting(examples):  # padding-free batches are one row: every position is a real token
        batch = collate(examples)
        tokens.append(int(batch["input_ids"].numel()))
        return batch
    trainer.data_collator = counting
    setup_s = time.perf_counter() - started
    trainer.train()
    seconds = [b[0] - a[0] for a, b in zip(timer.clocks, timer.clocks[1:])]
    timed = slice(min(args.skip_steps, len(seconds) - 1), None)
    return {"setup_s": setup_s, "attention": attention, "liger": config.use_liger_kernel,
            "sequences_per_step": per_step, "tokens/s": sum(tokens[:len(seconds)][timed]) / sum(seconds[timed]),
            "s/step": seconds, "tokens_per_step": tokens, **vs.memory_report(args.device)}


def checkpoint_worker(args) -> dict:
    """Stall of a synchronous save against the background writer's, and the round trip of what was written."""
    import torch
    from safetensors.torch import load_file

    from core.run_files import WEIGHTS_FILE
    from core.train import checkpoint as ckpt
    from core.train.checkpoint_writer import BackgroundWriter
    from core.train.plan import run_config
    from core.train.run_setup import setup
    from core.train.step import train_batches, train_step
    from core.trainer import save
    run = setup(project_config(args, "checkpoint"), log=lambda m: print(m, file=sys.stderr))
    train_step(run, [train_batches(run, 0)[0]])
    run.state.step = 1
    vs.synchronize(args.device)
    started = time.perf_counter()
    save(run, "checkpoint-1")
    sync_s = time.perf_counter() - started
    model = run.prepared.model
    state = {"weights": model.state_dict(), "tensors": {"optimizer": run.optim.optimizer.state_dict()}}
    with BackgroundWriter() as writer:
        started = time.perf_counter()
        writer.submit(lambda s: ckpt.save_checkpoint(Path(run.config.output_dir) / "checkpoint-2", model,
                                                     run.tokenizer, run_config(run.config, run.plan), run.state,
                                                     run.fingerprint,
                                                     {**s["tensors"], "scheduler": {}, "scaler": {}, "rng": {}},
                                                     s["weights"]), state)
        stall_s = time.perf_counter() - started
    written_s = time.perf_counter() - started
    loaded = load_file(Path(run.config.output_dir) / "checkpoint-2" / WEIGHTS_FILE)
    same = all(torch.equal(loaded[k].cpu(), v.detach().cpu()) for k, v in model.state_dict().items() if k in loaded)
    ckpt.load_checkpoint(Path(run.config.output_dir) / "checkpoint-1")
    return {"synchronous_save_s": sync_s, "background_stall_s": stall_s, "background_written_s": written_s,
            "round_trip_equal": same, "tensors_read_back": len(loaded)}


def run_arm(args, arm: str) -> dict:
    """The arm's measurement, in this (child) process."""
    if arm == "matmul":
        rate, what = vs.matmul_rate(args.device)
        return {"gflops": rate / 1e9, "what": what}
    if arm == "project_b4":
        return project_steps(args, arm)
    if arm in BUDGETS:  # the smoke run's 48 records would fill one batch: it scales the budgets by 1/16
        tokens = max(BUDGETS[arm] // (16 if args.smoke else 1), args.max_length)
        return {**project_steps(args, arm, batch_tokens=tokens), "batch_tokens": tokens}
    if arm in ("trl_shipped", "trl_best", "parity") and importlib.util.find_spec("trl") is None:
        return {"skipped": "trl is not installed (pip install -r bench/requirements.txt)"}
    if arm == "trl_shipped":  # a pass over as many records as its steps need: TRL's loop has no time cap
        subset = Path(args.work_dir) / "trl-shipped.jsonl"
        records = vs.read_records(args.data, args.trl_steps * args.batch_size)
        subset.write_text("".join(json.dumps(r) + "\n" for r in records))
        return vs.trl_worker(argparse.Namespace(**{**vars(args), "data": str(subset), "lora": False}))
    if arm == "trl_best":
        return trl_best_worker(args)
    if arm == "parity":
        return vs.parity_worker(args)
    if arm == "qlora":
        four_bit = args.device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
        result = project_steps(args, arm, lora=True, load_in_4bit=four_bit)
        return {**result, "load_in_4bit": four_bit,
                **({} if four_bit else {"note": "--load_in_4bit needs CUDA and bitsandbytes: --lora alone"})}
    return checkpoint_worker(args)


def summary(arm: str, result: dict, peak: float | None, skip: int) -> dict:
    """The JSON line of an arm: bench_vs_trl's summary of timed steps where it has them."""
    if "steps" not in result or len(result["steps"]) <= skip:
        return {k: v for k, v in result.items() if k != "steps"}
    summed = vs.summarise({**result, "matmul_at_start": result.get("matmul_at_start", 0.0)}, skip, peak or math.inf)
    extra = {k: result[k] for k in ("batch_tokens", "syncs_per_step", "load_in_4bit", "note", "patches") if k in result}
    return {**summed, "steps": len(result["steps"]), **extra}


def run_arms(args, arms: list[str]) -> None:
    """In the child: each arm's result on a tagged line as it ends; an arm that fails says so, and the next runs."""
    for arm in arms:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                result = run_arm(args, arm)
        except Exception as error:  # the traceback goes to stderr; the parent reports the arm as failed
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}"}
        print(vs.RESULT_TAG + json.dumps({"arm": arm, "result": result}, default=str), flush=True)


def child(args, arms: list[str]) -> Iterator[tuple[str, dict]]:
    """Run `arms` in one child process, killed after `--arm_timeout` seconds per arm; (arm, result) as each ends."""
    process = subprocess.Popen([sys.executable, __file__, "--arm", ",".join(arms), *args.passed],
                               stdout=subprocess.PIPE, text=True)
    cap = threading.Timer(args.arm_timeout * len(arms), process.kill)
    cap.start()
    started, done = time.perf_counter(), 0
    try:
        for line in process.stdout:
            if line.startswith(vs.RESULT_TAG):
                tagged = json.loads(line[len(vs.RESULT_TAG):])
                yield tagged["arm"], {**tagged["result"], "wall_s": time.perf_counter() - started}
                started, done = time.perf_counter(), done + 1
    finally:
        cap.cancel()
        process.wait()
    for arm in arms[done:]:
        yield arm, {"error": f"over its {args.arm_timeout} s cap" if process.returncode == -signal.SIGKILL
                    else f"exit code {process.returncode}; its error is above"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every arm on the CPU with a 2-layer model")
    parser.add_argument("--examples", type=int, default=0, help="training records (default: 4000; smoke 48)")
    parser.add_argument("--arm_seconds", type=float, default=0, help="timed steps per arm (default 40; smoke 1)")
    parser.add_argument("--arm_timeout", type=int, default=0, help="kill an arm after this (default 100; smoke 30)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--skip_steps", type=int, default=1, help="warm-up steps left out of the timing")
    for internal in ("--arm", "--data", "--model_dir", "--work_dir", "--device"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    parser.add_argument("--best_tokens", type=int, default=32768, help=argparse.SUPPRESS)
    parser.add_argument("--trl_steps", type=int, default=0, help="TRL's optimizer steps per arm (default 30; smoke 2)")
    parser.add_argument("--mean_length", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.examples = args.examples or (48 if args.smoke else 4000)
    args.arm_seconds = args.arm_seconds or (1 if args.smoke else 40)
    args.arm_timeout = args.arm_timeout or (30 if args.smoke else 100)
    args.trl_steps = args.trl_steps or (2 if args.smoke else 30)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.arm:
        vs.quiet()
        run_arms(args, args.arm.split(","))
        return
    import torch
    args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        tmp = Path(tmp)
        data = vs.write_records(tmp / "train.jsonl", args.examples)
        model_dir = small_qwen(tmp / "model", data) if args.smoke else vs.build_random_qwen(tmp / "model")
        lengths = [len(json.dumps(r)) // 4 for r in vs.read_records(str(data))]  # rough tokens per record
        mean_length = max(1, sum(lengths) // len(lengths))
        args.passed = ["--smoke"] * args.smoke + [
            "--data", str(data), "--model_dir", str(model_dir), "--work_dir", str(tmp), "--device", args.device,
            "--max_length", str(args.max_length), "--batch_size", str(args.batch_size), "--lr", str(args.lr),
            "--skip_steps", str(args.skip_steps), "--arm_seconds", str(args.arm_seconds),
            "--trl_steps", str(args.trl_steps), "--mean_length", str(mean_length), "--examples", str(args.examples)]
        # (tokens/s, budget) of the fastest project arm; the smoke run keeps TRL's CPU steps short
        peak, best, failed = None, (0.0, 1024 if args.smoke else BUDGETS["project_32k"]), []
        arms = args.arms.split(",")
        # smoke: all arms in one child; on a GPU each its own (its memory, its cap), trl_best after the budgets
        for group in [arms] if args.smoke else [[arm] for arm in arms]:
            passed = args.passed + (["--best_tokens", str(best[1])] if "trl_best" in group else [])
            for arm, result in child(argparse.Namespace(**{**vars(args), "passed": passed}), group):
                if arm == "matmul" and "gflops" in result:
                    peak = result["gflops"] * 1e9
                line = {"arm": arm, "device": args.device, **summary(arm, result, peak, args.skip_steps)}
                if arm in BUDGETS and not args.smoke and line.get("tokens/s", 0) > best[0]:
                    best = (line["tokens/s"], line["batch_tokens"])
                failed += [arm] if "error" in line else []
                print(json.dumps(line, default=str), flush=True)
    print(json.dumps({"arm": "total", "seconds": round(time.perf_counter() - began, 1), "failed": failed}), flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
