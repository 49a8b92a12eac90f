"""DPO's training speed against SFT's on the same pairs: tokens per second and their ratio.

  python bench/bench_dpo.py                         # SmolLM2-135M-Instruct on the CPU: full and LoRA, 3 repeats
  python bench/bench_dpo.py --arms sft_lora,dpo_lora --repeats 5 --steps 6
  python bench/bench_dpo.py --model /path/to/model  # any local chat model (the tiny test models too)

The data: `--pairs` pairs built from the synthetic sales-roleplay records (bench/synthetic.py): each
record's rep text is the context, its prospect reply the chosen reply, and another record's reply the
rejected one. SFT trains the same sequences: each pair becomes two records (context + chosen, context
+ rejected), so both arms see the same tokens, and an SFT batch holds twice the sequences of a DPO
batch of pairs (`--batch_size` pairs against 2 x that many sequences).

Each arm is set up in this process (`core.train.run_setup.setup`, as `train.py` does, with the
reference log-probabilities of a full fine-tune cached beforehand), trains `--steps` optimizer steps
(the first `--skip_steps` untimed) and is released before the next; the arms alternate, their order
reversed every other repeat, so a machine that slows down or speeds up favours neither. Printed per
arm: the median over repeats of its tokens/s (real tokens over the timed steps' wall time); and the
median over repeats of each repeat's DPO/SFT time ratio (seconds per token), full and LoRA apart.

Expected: a full fine-tune's DPO reads the reference from its cache, so its step is SFT's step on the
same sequences plus the per-reply sums (ratio about 1.0); DPO with LoRA also runs the reference (the
model with its adapters off) forward, without gradients, on every batch (about 1.3x).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ARMS = ("sft", "dpo", "sft_lora", "dpo_lora")


def write_data(directory: Path, pairs: int) -> tuple[Path, Path]:
    """(pairs file, SFT file of the same sequences)."""
    from synthetic import generate_pairs
    records = list(generate_pairs(pairs + 1, seed=0))
    pair_rows, sft_rows = [], []
    for i in range(pairs):
        context = [{"role": "system", "content": "You are a busy prospect on a sales call."},
                   {"role": "user", "content": records[i]["input"]}]
        chosen, rejected = records[i]["output"], records[i + 1]["output"]
        pair_rows.append({"messages": context, "chosen": chosen, "rejected": rejected})
        sft_rows += [{"messages": context + [{"role": "assistant", "content": reply}]} for reply in (chosen, rejected)]
    pairs_path, sft_path = directory / "pairs.jsonl", directory / "sft.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows))
    sft_path.write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    return pairs_path, sft_path


def arm_config(arm: str, args, data: tuple[Path, Path], directory: Path):
    from core.config import TrainConfig
    objective, _, lora = arm.partition("_")
    config = TrainConfig(data_path=str(data[0] if objective == "dpo" else data[1]), model_name=args.model,
                         cache_dir=args.cache_dir, output_dir=str(directory / f"out-{arm}"), objective=objective,
                         batch_size=args.batch_size * (1 if objective == "dpo" else 2), max_length=args.max_length,
                         eval_split=0.0, epochs=1, lr=1e-5, save_steps=0, log_steps=1000, sample_prompts=0,
                         report=False, lora=bool(lora), overwrite_output_dir=True, seed=0)
    config.given = frozenset({"lr"})
    config.validate()
    return config


def time_arm(arm: str, args, data, directory: Path) -> dict:
    """Set the arm up, train `--steps` steps, return its timed steps' tokens and seconds."""
    import torch

    from core.train.output_dir import unlock_output_dir
    from core.train.run_setup import setup
    from core.train.step import read_results, step_batches, step_groups, train_batches, train_step
    config = arm_config(arm, args, data, directory)
    run = setup(config, log=lambda *_: None)
    try:
        groups = step_groups(run, train_batches(run, 0))[:args.steps]
        tokens = seconds = 0.0
        for number, group in enumerate(groups):
            started = time.perf_counter()
            result = train_step(run, group, step_batches(run, group))
            read_results([result])
            if number >= args.skip_steps:
                seconds += time.perf_counter() - started
                tokens += result.real_tokens
        return {"arm": arm, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds if seconds else 0.0,
                "threads": torch.get_num_threads()}
    finally:
        unlock_output_dir(Path(config.output_dir))
        del run
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--cache_dir", default="")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=2, help="pairs per DPO step (SFT: twice the sequences)")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--skip_steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); on a shared, "
                        "busy machine 1 can be many times faster than several, which wait for each other")
    args = parser.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    arms = args.arms.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        directory = Path(tmp)
        data = write_data(directory, args.pairs)
        for arm in arms:  # untimed: the tokenised caches and a full fine-tune's reference pass
            if arm == "dpo":
                time_arm(arm, argparse.Namespace(**{**vars(args), "steps": 0}), data, directory)
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        for repeat in range(args.repeats):
            for arm in (arms if repeat % 2 == 0 else arms[::-1]):
                results[arm].append(time_arm(arm, args, data, directory))
                print(f"repeat {repeat + 1} {arm}: {results[arm][-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    print(f"model {args.model}, {args.pairs} pairs, {args.batch_size} pairs (DPO) or {2 * args.batch_size} "
          f"sequences (SFT) per step, {args.steps - args.skip_steps} timed steps x {args.repeats} repeats, "
          f"{results[arms[0]][0]['threads']} torch threads")
    for arm in arms:
        rates = [r["tokens_per_s"] for r in results[arm]]
        runs = ", ".join(f"{r:.1f}" for r in rates)
        print(f"  {arm:<9} {statistics.median(rates):8.1f} tokens/s (median; runs {runs})")
    for suffix in ("", "_lora"):
        sft, dpo = results.get(f"sft{suffix}"), results.get(f"dpo{suffix}")
        if sft and dpo:
            ratios = [s["tokens_per_s"] / d["tokens_per_s"] for s, d in zip(sft, dpo)]
            print(f"  DPO/SFT time per token{suffix.replace('_', ' with '):<10} {statistics.median(ratios):.2f}x "
                  f"(median of per-repeat ratios {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
