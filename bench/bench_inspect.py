"""How long `train.py inspect` takes on a large file: cold (tokenising) and warm (from the cache).

Builds a JSONL of --records records, half synthetic rep/prospect pairs, half multi-turn conversations
in the messages format (cycled from data/roleplay_conversations.jsonl with a numbered opening line so
that they are distinct), and times `python train.py inspect` on it twice in a fresh cache directory.

  python bench/bench_inspect.py --records 10000 --model_name smollm2
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import generate_pairs  # bench/ is on the path when this script runs

ROOT = Path(__file__).resolve().parent.parent


def write_mixed(path: Path, n: int) -> None:
    conversations = [json.loads(line) for line in (ROOT / "data" / "roleplay_conversations.jsonl").open()]
    pairs = generate_pairs(n - n // 2, seed=0)
    with path.open("w") as out:
        for i, conversation in zip(range(n // 2), itertools.cycle(conversations)):
            messages = [dict(m) for m in conversation["messages"]]
            first_user = next(m for m in messages if m["role"] == "user")
            first_user["content"] = f"(call {i}) " + first_user["content"]
            out.write(json.dumps({"messages": messages}) + "\n")
        for pair in pairs:
            out.write(json.dumps(pair) + "\n")


def timed_inspect(data: Path, model_name: str, cache: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "inspect", "--data_path", str(data),
                             "--model_name", model_name, "--cache_dir", str(cache), "--examples", "0"],
                            capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--model_name", default="smollm2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "mixed.jsonl"
        write_mixed(data, args.records)
        size_mb = data.stat().st_size / 1e6
        model_cache = tmp / "model-cache"
        # Convert the model once first (a GGUF conversion is a one-time cost, not part of inspect).
        subprocess.run([sys.executable, "-c", "import sys; from core.model.load import load_tokenizer; "
                        "load_tokenizer(sys.argv[1], sys.argv[2])",
                        args.model_name, str(model_cache)], check=True, capture_output=True)
        cold, report = timed_inspect(data, args.model_name, model_cache)
        warm, _ = timed_inspect(data, args.model_name, model_cache)
    print(report.strip())
    print(f"\ninspect on {args.records} records ({size_mb:.0f} MB): "
          f"cold {cold:.1f} s (validate + tokenise + statistics), warm {warm:.1f} s (cached tokens)")


if __name__ == "__main__":
    main()
