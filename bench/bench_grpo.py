"""GRPO's learning benchmark: SmolLM2-135M-Instruct (offline, `--model_name smollm2`) tuned on the persona
conversations, then GRPO against the replayed rep on the training scenarios; both measured on held-out
scenarios (every fifth conversation of the file, never trained on).

Targets (issue 35): on the held-out scenarios, role inversion at most half the SFT model's, persona facts
named more often, repetition not higher, and the held-out reply loss on the reference replies within 0.10 nats
of the SFT model's; a GRPO step of 8 scenarios x 4 calls x 3 bot turns at most 60 s on a 2-core CPU.

    nice -n 10 python bench/bench_grpo.py                       # SFT 60 steps, GRPO 20 steps (about an hour)
    nice -n 10 python bench/bench_grpo.py --sft_steps 20 --grpo_steps 4 --work /tmp/grpo_bench
    nice -n 10 python bench/bench_grpo.py --timing_only   # one GRPO step from SmolLM2 itself, setup included
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.cli import main as cli


def split(data: Path, work: Path) -> tuple[Path, Path]:
    """(training conversations, held-out conversations): every fifth line held out."""
    lines = data.read_text().splitlines()
    train, held = work / "train.jsonl", work / "held_out.jsonl"
    train.write_text("".join(line + "\n" for i, line in enumerate(lines) if i % 5 != 4))
    held.write_text("".join(line + "\n" for i, line in enumerate(lines) if i % 5 == 4))
    return train, held


def run(*args) -> None:
    code = cli([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"{' '.join(map(str, args[:3]))}... exited {code}")


def measured(model: Path, held: Path, work: Path, name: str, new_tokens: int) -> dict:
    """Held-out self-play (per-scenario rates, averaged) and the reply loss on the held-out reference replies."""
    play, losses = work / f"{name}_play.jsonl", work / f"{name}_loss.jsonl"
    run("evaluate", "--model", model, "--conversations", held, "--output", play, "--max_new_tokens", new_tokens)
    run("evaluate", "--model", model, "--data_path", held, "--output", losses, "--no-replies")
    scenarios = json.loads(play.with_suffix(".summary.json").read_text())["per_scenario"]
    keys = ("role_inversion", "persona_named", "persona_contradicted", "repetition", "mean_words", "reward")
    mean = {key: sum(s[key] for s in scenarios) / len(scenarios) for key in keys}
    return {**mean, "reply_loss": json.loads(losses.with_suffix(".summary.json").read_text())["mean_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="data/roleplay_conversations.jsonl")
    parser.add_argument("--work", default="grpo_bench")
    parser.add_argument("--sft_steps", type=int, default=60)
    parser.add_argument("--grpo_steps", type=int, default=20)
    parser.add_argument("--new_tokens", type=int, default=48)
    parser.add_argument("--timing_only", action="store_true", help="one GRPO step from SmolLM2, no SFT, no evaluation")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train, held = split(Path(args.data_path), work)
    if args.timing_only:
        started = time.perf_counter()
        run("--objective", "grpo", "--data_path", train, "--output_dir", work / "timing", "--max_steps", 1,
            "--batch_size", 8, "--generations", 4, "--bot_turns", 3, "--rollout_max_new_tokens", args.new_tokens,
            "--model_name", "smollm2", "--lora", "--eval_split", "0", "--save_steps", "0", "--sample_prompts", "0",
            "--no-report", "--overwrite_output_dir")
        print(f"one GRPO step (8 scenarios x 4 calls x 3 bot turns, up to {args.new_tokens} tokens a turn), model "
              f"loading and best_model/ included: {time.perf_counter() - started:.1f} s (target <= 60 s per step)")
        return
    common = ["--lora", "--save_steps", "0", "--sample_prompts", "0", "--no-report",
              "--overwrite_output_dir", "--eval_split", "0.1"]
    run("--data_path", train, "--output_dir", work / "sft", "--max_steps", args.sft_steps, "--batch_size", 4,
        "--log_steps", 10, "--model_name", "smollm2", *common)
    started = time.perf_counter()
    run("--objective", "grpo", "--data_path", train, "--output_dir", work / "grpo", "--max_steps", args.grpo_steps,
        "--batch_size", 8, "--generations", 4, "--bot_turns", 3, "--rollout_max_new_tokens", args.new_tokens,
        "--lr", "5e-5", "--beta", "0.04", "--log_steps", 1, "--eval_steps", max(args.grpo_steps // 2, 1),
        "--model_name", work / "sft" / "best_model", *common)
    seconds = time.perf_counter() - started
    steps = [json.loads(line) for line in (work / "grpo" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["type"] == "train"]
    sft, grpo = (measured(work / name / "best_model", held, work, name, args.new_tokens) for name in ("sft", "grpo"))
    print(f"\nheld-out scenarios: {held} ({sum(1 for _ in held.open())}); SFT {args.sft_steps} steps, GRPO "
          f"{args.grpo_steps} steps of 8 scenarios x 4 calls x 3 bot turns")
    print(f"{'':<22}{'SFT':>10}{'GRPO':>10}   target")
    targets = {"role_inversion": "GRPO <= SFT / 2", "persona_named": "GRPO > SFT", "repetition": "GRPO <= SFT",
               "reply_loss": "GRPO <= SFT + 0.10", "persona_contradicted": "", "mean_words": "", "reward": ""}
    for key, target in targets.items():
        print(f"{key:<22}{sft[key]:>10.3f}{grpo[key]:>10.3f}   {target}")
    print(f"GRPO: {seconds / max(len(steps), 1):.1f} s per step, evaluations and saving included (target <= 60 s); "
          f"train reward {steps[0]['reward']:.3f} at step 1, {steps[-1]['reward']:.3f} at step {steps[-1]['step']}")


if __name__ == "__main__":
    main()
