"""What the samples cost a short run: wall time of `train.py` at the defaults against `--sample_prompts 0`.

Each arm is a whole `python train.py` process (start-up, tokenising from the warm cache, training,
validation, samples, checkpoints) on the first `--records` records of `--data_path`, SmolLM2 on the CPU,
`--epochs 1 --batch_size 4`; arms alternate, `--repeats` times, so that a noisy machine slows them alike.
Printed: each arm's median seconds, its ratio to the last arm, and the seconds the samples themselves
took (from samples.jsonl).

    python bench/bench_samples.py                               # the defaults against --sample_prompts 0
    python bench/bench_samples.py --arms "" "--sample_prompts 4" "--sample_prompts 0"
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_arm(data: Path, output_dir: Path, extra: str) -> tuple[float, float]:
    """One training process; returns its wall seconds and the seconds its samples took."""
    command = [sys.executable, str(ROOT / "train.py"), "--data_path", str(data), "--model_name", "smollm2",
               "--output_dir", str(output_dir), "--overwrite_output_dir", "--epochs", "1", "--batch_size", "4",
               *shlex.split(extra)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"train.py {extra} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    samples = output_dir / "samples.jsonl"
    lines = samples.read_text().splitlines() if samples.exists() else []
    return seconds, sum(json.loads(line)["seconds"] for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="data/training.jsonl")
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=["", "--sample_prompts 0"],
                        help="extra train.py options per arm; the last arm is the baseline of the ratios")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        lines = [line for line in (ROOT / args.data_path).read_text().splitlines() if line.strip()]
        data.write_text("".join(line + "\n" for line in lines[:args.records]))
        run_arm(data, Path(tmp) / "warm-up", "--max_steps 1 --sample_prompts 0")  # converts and caches the model
        results = {arm: [] for arm in args.arms}
        for _ in range(args.repeats):
            for arm in args.arms:
                results[arm].append(run_arm(data, Path(tmp) / "run", arm))
    baseline = statistics.median(s for s, _ in results[args.arms[-1]])
    print(f"{args.data_path}, first {args.records} records, SmolLM2, --epochs 1 --batch_size 4, "
          f"{args.repeats} runs per arm alternating")
    print(f"{'arm':<40} {'seconds (each)':<24} {'median':>7} {'ratio':>6} {'samples s':>10}")
    for arm, runs in results.items():
        median = statistics.median(s for s, _ in runs)
        each = ", ".join(f"{s:.1f}" for s, _ in runs)
        print(f"{arm or 'defaults':<40} {each:<24} {median:7.1f} {median / baseline:6.2f} "
              f"{statistics.median(x for _, x in runs):10.2f}")


if __name__ == "__main__":
    main()
