"""`--compile` on the CPU: how long its first steps take, and how soon a SIGTERM during them ends the run.

  python bench/bench_compile_cpu.py                          # SmolLM2-135M-Instruct, 2 steps, SIGTERM after 20 s
  python bench/bench_compile_cpu.py --model DIR --steps 2 --signal_after 10 --timeout 600

Two runs of `train.py --compile` (whole processes, output silenced into a temporary directory), on the first
16 records of data/training.jsonl:
1. to the end of `--steps` steps (or `--timeout`): the wall time from the "Batches:" line (the model is
   loaded and prepared) to the end, and to the same point without --compile, for comparison;
2. with a SIGTERM `--signal_after` seconds after that line: the seconds from the signal to the process's
   exit, its exit code and its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def command(args, directory: Path, name: str, compile: bool) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--data_path", str(directory / "data.jsonl"), "--model_name",
            args.model, "--output_dir", str(directory / name), "--max_steps", str(args.steps), "--batch_size", "2",
            "--eval_split", "0", "--save_steps", "0", "--sample_prompts", "0", "--no-report", "--log_steps", "1",
            *(["--compile"] if compile else [])] + (["--cache_dir", args.cache_dir] if args.cache_dir else [])


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, float]:
    """Start a run; return it and the time its "Batches:" line appeared (setup done)."""
    handle = log.open("w")
    process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    while process.poll() is None and "Batches:" not in log.read_text(errors="replace"):
        time.sleep(0.2)
    return process, time.monotonic()


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def to_the_end(args, directory: Path, compile: bool) -> dict:
    name = f"end-{int(compile)}"
    process, ready = start(command(args, directory, name, compile), directory / f"{name}.log")
    try:
        code = process.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = None
    return {"compile": compile, "seconds": round(time.monotonic() - ready, 1), "exit": code,
            "finished": code == 0, "last_line": last_line(directory / f"{name}.log")}


def stopped(args, directory: Path) -> dict:
    process, ready = start(command(args, directory, "stop", True), directory / "stop.log")
    time.sleep(max(0.0, ready + args.signal_after - time.monotonic()))
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    said = None  # when its error line appeared: the run has stopped; what follows is the interpreter's exit
    while process.poll() is None and time.monotonic() < signalled + 120:
        if said is None and "error:" in (directory / "stop.log").read_text(errors="replace"):
            said = time.monotonic()
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
    code = process.wait()
    return {"signal_after_s": args.signal_after, "error_line_s": round(said - signalled, 1) if said else None,
            "exit_s": round(time.monotonic() - signalled, 1), "exit": code,
            "last_line": last_line(directory / "stop.log")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--cache_dir", default="")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--signal_after", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--skip_end", action="store_true", help="only the SIGTERM run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        directory = Path(tmp)
        records = (ROOT / "data" / "training.jsonl").read_text().splitlines()[:16]
        (directory / "data.jsonl").write_text("\n".join(records) + "\n")
        results = {"stop": stopped(args, directory)}
        if not args.skip_end:
            results["plain"], results["compiled"] = (to_the_end(args, directory, c) for c in (False, True))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
