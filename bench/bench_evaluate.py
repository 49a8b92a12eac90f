"""Tokens per second of `evaluate --no-replies`'s loss pass against the training run's validation pass.

Both on the same records (the validation split of `--data_path` at the training defaults) and the same
model (SmolLM2-135M-Instruct on the CPU), alternating `--repeats` times; the table gives each pass's
median tokens/s (every token of the sequences, prompt included, as the forward pass reads them all).

    python bench/bench_evaluate.py                                   # the demo's data, ~2 min on 2 idle cores
    python bench/bench_evaluate.py --data_path data/training.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from core.config import FormatOptions, LoadOptions, option_group, parse_args
from core.data.tokenized import split_records, tokenize_file
from core.model.load import default_cache_dir
from core.train.run_setup import setup
from core.train.step import validate
from core.use.backend import load_for_chat
from core.use.evaluate import record_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default="data/roleplay_conversations.jsonl")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_args(["--data_path", args.data_path, "--model_name", "smollm2", "--output_dir", f"{tmp}/run",
                             "--sample_prompts", "0", "--no-report"])
        run = setup(config, log=lambda *_: None)
        held = split_records(run.data.statistics["records"], config.eval_split, config.seed)
        lines = Path(args.data_path).read_text().splitlines()
        held_out = Path(tmp) / "held_out.jsonl"
        held_out.write_text("".join(line + "\n" for line, h in zip((x for x in lines if x.strip()), held) if h))
        model, tokenizer = load_for_chat("smollm2", LoadOptions(device="cpu"))
        data = tokenize_file(held_out, tokenizer, option_group(FormatOptions, config), config.max_length,
                             default_cache_dir())
        tokens = int(np.sum(data.lengths))
        assert tokens == int(run.data.sequences.lengths[run.data.eval_idx].sum())
        times = {"validation (training run)": [], "evaluate --no-replies": []}
        for _ in range(args.repeats):
            started = time.perf_counter()
            loss = validate(run)["eval_loss"]
            times["validation (training run)"].append(time.perf_counter() - started)
            started = time.perf_counter()
            losses, trained = record_losses(model, data, 8, config.max_length, tokenizer.pad_token_id)
            times["evaluate --no-replies"].append(time.perf_counter() - started)
        print(f"{args.data_path}: {len(data.hashes)} held-out records, {tokens} tokens; validation loss {loss:.5f}, "
              f"evaluate's {losses.sum() / trained.sum():.5f}")
        for name, seconds in times.items():
            print(f"{name:<28} {tokens / statistics.median(seconds):8.0f} tokens/s  (median of "
                  f"{json.dumps([round(s, 2) for s in seconds])} s)")


if __name__ == "__main__":
    main()
