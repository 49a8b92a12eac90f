"""Offline demo: fine-tune SmolLM2-135M-Instruct on the sample sales-roleplay pairs, then compare replies.

Shows the multi-turn data as it will be trained (trained tokens marked), fine-tunes for a short run
sized for a 2-core CPU (about 3 to 4 minutes), prints validation loss as it falls, and puts the base
model's reply beside the fine-tuned model's (greedy, and sampled as the chat command samples) for a
few held-out prompts; the run's report.html and samples.jsonl are in runs/demo. Any training option
can be appended, e.g. `python demo.py --max_steps 100`.
"""

from __future__ import annotations

import sys
import textwrap

from core.cli import InspectConfig, inspect, prefer_huge_pages, report_errors

prefer_huge_pages()  # before torch loads: it reads the allocator option at its first allocation
from pathlib import Path  # noqa: E402

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from core.config import parse_args  # noqa: E402
from core.model.generation import Sampling, generate_reply  # noqa: E402
from core.train.run_setup import setup  # noqa: E402
from core.train.step import validate  # noqa: E402
from core.trainer import fit  # noqa: E402
from core.use.chat import repeated_sentence  # noqa: E402
from core.use.report import read_jsonl, write_report  # noqa: E402

DEMO_DEFAULTS = ["--data_path", "data/training.jsonl", "--model_name", "smollm2", "--output_dir", "runs/demo",
                 "--epochs", "1", "--max_steps", "45", "--batch_size", "4", "--lr", "1e-4", "--warmup_ratio", "0.1",
                 "--eval_steps", "15", "--log_steps", "5", "--save_steps", "0", "--overwrite_output_dir",
                 "--sample_prompts", "4", "--sample_max_new_tokens", "48"]
SAMPLE_SEED = 7


def wrap(label: str, text: str) -> str:
    return textwrap.fill(text, 100, initial_indent=label, subsequent_indent=" " * 14)


def demo(argv: list[str]) -> int:
    hf_logging.disable_progress_bar()
    print("== The multi-turn sample, as it would be trained (trained tokens marked) ==")
    inspect(parse_args(["--data_path", "data/roleplay_conversations.jsonl", "--model_name", "smollm2",
                        "--examples", "1"], InspectConfig))
    config = parse_args(DEMO_DEFAULTS + argv)
    print(f"\n== Fine-tuning {config.model_name} on {config.data_path} ==")
    run = setup(config)
    print(f"validation before training: loss {validate(run)['eval_loss']:.4f}")
    summary = fit(run)
    output_dir = Path(config.output_dir)
    best = output_dir / "best_model"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(best), AutoTokenizer.from_pretrained(best)
    base = {s["prompt"]: s["greedy"] for s in read_jsonl(output_dir / "samples.jsonl")[0]["samples"]}
    print(f"\n== Held-out prompts: base model vs fine-tuned ({best}, validation loss "
          f"{summary['best_eval_loss']:.4f}) ==")
    for index, prompt in enumerate(run.data.prompts):
        sampled = generate_reply(model, tokenizer, prompt["messages"], Sampling(), seed=SAMPLE_SEED + index)
        print("\n" + wrap("rep:          ", prompt["messages"][-1]["content"]))
        print(wrap("base:         ", base[prompt["messages"][-1]["content"]]))
        print(wrap("fine-tuned:   ", generate_reply(model, tokenizer, prompt["messages"], Sampling(greedy=True))))
        print(wrap("  (sampled):  ", sampled + ("  [repeats a sentence]" if repeated_sentence(sampled) else "")))
        print(wrap("reference:    ", prompt["reference"]))
    print(f"\nReport: {write_report(output_dir)}  (samples at every evaluation: {output_dir / 'samples.jsonl'})")
    print(f"Practise with it: python train.py chat --model {best} --scenarios data/scenarios.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(report_errors(lambda: demo(sys.argv[1:])))
