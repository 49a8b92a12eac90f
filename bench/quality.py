"""Held-out quality: the project at its defaults, with --lr auto and with --lora, against TRL's SFTTrainer's defaults.

  PYTHONPATH=. python bench/quality.py --seeds 0 1          # the table in bench/README.md ("Quality")

The conversations file (data/roleplay_conversations.jsonl by default) is cut to its first --max_records records
and split once (seed SPLIT_SEED, whatever --seeds) into a held-out part (--held_out) and a training file. Nothing
trains, validates or searches on the held-out part. For each seed, each arm trains on the training file for
--epochs, in its own process:

  default   python train.py: full fine-tune at --lr's default (2e-5), its default --eval_split 0.1 of the training
            file held out for validation and for picking best_model/
  lr_auto   the same with --lr auto (the search judges on that validation split)
  lora      the same with --lora and no --lr (2e-4)
  trl       TRL's SFTTrainer at its defaults on the records the project trains on (the training file less the
            project's validation split for that seed), with the same epochs and seed

Every arm, and the untrained model once ("base"), is then scored by the same code, `train.py evaluate` on the
held-out file: the mean loss per trained token of the held-out replies (core/use/evaluate.py, validation's loss
pass), and the roleplay metrics of greedy replies of up to --max_new_tokens to each held-out record's last rep
message. --batch_size (default 1) goes to every arm, TRL included: at this size a larger batch leaves a run too
few optimizer steps for --lr auto's 4 trial rates within its 15% bound. Each process gets --threads torch threads.
Results: one JSON line per arm and seed (--output), and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLIT_SEED = 1234        # the held-out split; the training seeds (--seeds) only change what happens inside a run
ARMS = {"default": [], "lr_auto": ["--lr", "auto"], "lora": ["--lora"]}
RESULT_TAG = "QUALITY_RESULT "
COLUMNS = (("held-out loss", "mean_loss", 4), ("role", "role_consistency", 2),
           ("rep. within", "repeated_sentence_share", 2), ("distinct-2", "distinct_2", 2),
           ("len/ref", "length_ratio", 2), ("persona named", "persona_mention_share", 2),
           ("contradicts", "persona_contradiction_share", 2))


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def split(args, work: Path) -> tuple[Path, Path]:
    """(training file, held-out file): the first --max_records records, --held_out of them held out."""
    from core.data.tokenized import split_records
    records = read_records(Path(args.data))[:args.max_records]
    held = split_records(len(records), args.held_out, SPLIT_SEED)
    return (write_records(work / "train.jsonl", [r for r, h in zip(records, held) if not h]),
            write_records(work / "held_out.jsonl", [r for r, h in zip(records, held) if h]))


def child_env(args) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}


def run(command: list, args, what: str) -> float:
    """Run a child process to completion (its output to a log beside the results); its wall seconds."""
    print(f"[{what}] running ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(Path(args.output).with_suffix(".log"), "a", encoding="utf-8") as log:
        log.write(f"\n=== {what}: {' '.join(map(str, command))}\n")
        log.flush()
        done = subprocess.run([str(c) for c in command], cwd=ROOT, env=child_env(args), stdout=log, stderr=log)
    if done.returncode:
        raise SystemExit(f"{what} failed (exit code {done.returncode}); see {Path(args.output).with_suffix('.log')}")
    return time.perf_counter() - started


def train_project(arm: str, seed: int, args, train: Path, work: Path) -> tuple[Path, dict]:
    out = work / f"{arm}-{seed}"
    seconds = run([sys.executable, "train.py", "--data_path", train, "--model_name", args.model, "--cache_dir",
                   args.cache_dir, "--output_dir", out, "--overwrite_output_dir", "--epochs", args.epochs,
                   "--seed", seed, "--batch_size", args.batch_size, "--sample_prompts", 0, "--save_steps", 0,
                   "--no-report", *ARMS[arm]], args, f"{arm} seed {seed}")
    config = json.loads((out / "best_model" / "train_config.json").read_text())
    search = next((m for m in read_records(out / "metrics.jsonl") if m["type"] == "lr_search"), None)
    return out / "best_model", {"train_s": seconds, "lr": config["plan"]["lr"],
                                **({"lr_search": search} if search else {})}


def train_trl(seed: int, args, train: Path, work: Path) -> tuple[Path, dict]:
    out = work / f"trl-{seed}"
    seconds = run([sys.executable, __file__, "--worker", "trl", "--train_file", train, "--seed_for_worker", seed,
                   "--out_dir", out, "--epochs", args.epochs, "--batch_size", args.batch_size, "--model", args.model,
                   "--cache_dir", args.cache_dir, "--threads", args.threads],
                  args, f"trl seed {seed}")
    return out, {"train_s": seconds, **json.loads((out / "trl_run.json").read_text())}


def trl_worker(args) -> None:
    """TRL's SFTTrainer at its defaults on the records the project's run with this seed trains on.

    Given: the epochs, seed and batch size, use_cpu (TRL refuses a CPU run without it), fp32 (TRL's default bf16
    is for GPUs), no gradient checkpointing (TRL's default: it changes memory and time, not the result), and no
    saving or reports. Conversational records: TRL trains on every token (assistant_only_loss is off by default).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from core.config import TrainConfig
    from core.data.tokenized import split_records
    torch.set_num_threads(args.threads)
    model_dir = model_directory(args)
    records = read_records(Path(args.train_file))
    is_eval = split_records(len(records), TrainConfig.eval_split, args.seed_for_worker)
    dataset = Dataset.from_list([{"messages": r["messages"]} for r, e in zip(records, is_eval) if not e])
    config = SFTConfig(output_dir=str(args.out_dir), num_train_epochs=args.epochs,
                       per_device_train_batch_size=args.batch_size, seed=args.seed_for_worker, use_cpu=True,
                       bf16=False, gradient_checkpointing=False, save_strategy="no", report_to="none",
                       disable_tqdm=True)
    trainer = SFTTrainer(model=str(model_dir), args=config, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    trainer.save_model(str(args.out_dir))
    info = {"lr": config.learning_rate, "records": len(dataset), "steps": trainer.state.global_step,
            "dtype": str(trainer.model.dtype), "assistant_only_loss": config.assistant_only_loss,
            "lr_scheduler": str(config.lr_scheduler_type), "warmup_steps": config.warmup_steps}
    (Path(args.out_dir) / "trl_run.json").write_text(json.dumps(info) + "\n")


def model_directory(args) -> Path:
    """The model as a plain directory (SmolLM2's GGUF converted once into --cache_dir), which TRL can load."""
    from core.model.load import converted_gguf_dir, default_cache_dir, resolve_model_path
    path = Path(resolve_model_path(args.model))
    return converted_gguf_dir(path, default_cache_dir(args.cache_dir)) if path.suffix == ".gguf" else path


def score(model: Path | str, args, held_out: Path, out: Path, what: str) -> dict:
    """`train.py evaluate` on the held-out file: held-out reply loss and the roleplay metrics of greedy replies."""
    seconds = run([sys.executable, "train.py", "evaluate", "--model", model, "--data_path", held_out, "--output",
                   out, "--max_new_tokens", args.max_new_tokens, "--cache_dir", args.cache_dir], args,
                  f"evaluate {what}")
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    return {"mean_loss": summary["mean_loss"], **summary["roleplay"], "role_judge": summary["role_judge"],
            "held_out_records": summary["records"], "evaluate_s": seconds}


def table(rows: list[dict]) -> str:
    head = "| arm | seed | lr | " + " | ".join(name for name, _, _ in COLUMNS) + " | train s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r[key]:.{digits}f}" if isinstance(r.get(key), float) else "" for _, key, digits in COLUMNS]
        lr = f"{r['lr']:.3g}" if r.get("lr") else ""
        train_s = f"{r['train_s']:.0f}" if r.get("train_s") else ""
        lines.append(f"| {r['arm']} | {r.get('seed', '')} | {lr} | " + " | ".join(cells) + f" | {train_s} |")
    return "\n".join(lines)


def verdicts(rows: list[dict], seeds: list[int]) -> list[str]:
    """Did --lr auto beat the default and TRL on held-out loss in each seed; is LoRA within 0.05 of the best full FT?"""
    loss = {(r["arm"], r.get("seed")): r["mean_loss"] for r in rows}
    lines = []
    for other in ("default", "trl"):
        gaps = [loss[(other, s)] - loss[("lr_auto", s)] for s in seeds]
        lines.append(f"lr_auto below {other} on held-out loss in {sum(g > 0 for g in gaps)} of {len(seeds)} seeds "
                     f"(by {', '.join(f'{g:+.4f}' for g in gaps)} nats)")
    gaps = [loss[("lora", s)] - min(loss[("default", s)], loss[("lr_auto", s)]) for s in seeds]
    lines.append(f"lora minus the best full fine-tune (default or lr_auto): {', '.join(f'{g:+.4f}' for g in gaps)} "
                 f"nats; within 0.05 in {sum(g <= 0.05 for g in gaps)} of {len(seeds)} seeds")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        trl_worker(args)
        return
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".log").write_text("")
    started, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp, output.open("w", encoding="utf-8") as results:
        work = Path(tmp)
        train, held_out = split(args, work)

        def add(row: dict) -> None:
            rows.append(row)
            results.write(json.dumps(row) + "\n")
            results.flush()
        add({"arm": "base", **score(args.model, args, held_out, work / "base.jsonl", "base")})
        for seed in args.seeds:
            for arm in (*ARMS, "trl"):
                model, info = (train_trl(seed, args, train, work) if arm == "trl"
                               else train_project(arm, seed, args, train, work))
                add({"arm": arm, "seed": seed, **info,
                     **score(model, args, held_out, work / f"{arm}-{seed}.jsonl", f"{arm} seed {seed}")})
    judge = rows[0]["role_judge"]
    n_train = len(read_records(Path(args.data))[:args.max_records]) - rows[0]["held_out_records"]
    print(f"\n{args.max_records} records of {args.data}: {n_train} in the training file, "
          f"{rows[0]['held_out_records']} held out; {args.epochs} epoch(s), batch {args.batch_size}, seeds "
          f"{' '.join(map(str, args.seeds))}, greedy replies of up to {args.max_new_tokens} tokens; role judge "
          f"accuracy {judge['accuracy']:.0%} on {judge['held_out_turns']} held-out turns\n")
    print(table(rows))
    print()
    print("\n".join(verdicts(rows, args.seeds)))
    searches = [r["lr_search"] for r in rows if "lr_search" in r]
    for search in searches:
        print(f"lr_auto search: {search['search_steps']} of {search['run_steps']} steps, {search['seconds']:.0f} s; "
              + ", ".join(f"{rate:.2g} -> {loss:.4f}" for rate, loss in zip(search["rates"], search["eval_losses"])))
    print("median train s: " + ", ".join(
        f"{arm} {statistics.median(r['train_s'] for r in rows if r['arm'] == arm):.0f}" for arm in (*ARMS, "trl")))
    print(f"total {time.perf_counter() - started:.0f} s; JSON lines in {output}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "roleplay_conversations.jsonl"),
                        help="a .jsonl file of multi-turn conversations ({'messages': [...]})")
    parser.add_argument("--max_records", type=int, default=38, help="use the first N records of --data")
    parser.add_argument("--held_out", type=float, default=0.2, help="fraction of them held out for scoring")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=1, help="sequences per step, for every arm")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="longest greedy reply scored")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--cache_dir", default="", help="the project's cache (the converted SmolLM2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output", default=str(ROOT / "runs" / "quality" / "results.jsonl"),
                        help="JSON lines, one per arm and seed (children's output goes beside it, .log)")
    parser.add_argument("--worker", choices=("trl",), help=argparse.SUPPRESS)
    for internal, kind in (("--train_file", str), ("--seed_for_worker", int), ("--out_dir", str)):
        parser.add_argument(internal, type=kind, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
