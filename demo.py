"""Offline demo: fine-tune SmolLM2-135M-Instruct on the sample sales-roleplay pairs, then compare replies.

Shows the multi-turn data as it will be trained (trained tokens marked), fine-tunes for a short run
sized for a 2-core CPU (about 5 minutes), prints validation loss as it falls, and puts the base
model's reply beside the fine-tuned model's for a few held-out prompts. Any training option can be
appended, e.g. `python demo.py --max_steps 100`.
"""

from __future__ import annotations

import sys
import textwrap

from core.cli import InspectConfig, inspect, prefer_huge_pages, report_errors

prefer_huge_pages()  # before torch loads: it reads the allocator option at its first allocation
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from core.config import TrainConfig, parse_args  # noqa: E402
from core.dataset import data_options, load_conversations  # noqa: E402
from core.generation import generate_reply  # noqa: E402
from core.run_setup import setup  # noqa: E402
from core.step import validate  # noqa: E402
from core.tokenized import split_records  # noqa: E402
from core.trainer import fit  # noqa: E402

DEMO_DEFAULTS = ["--data_path", "data/training.jsonl", "--model_name", "smollm2", "--output_dir", "runs/demo",
                 "--epochs", "1", "--max_steps", "45", "--batch_size", "4", "--lr", "1e-4", "--warmup_ratio", "0.1",
                 "--eval_steps", "15", "--log_steps", "5", "--save_steps", "0", "--overwrite_output_dir"]
HELD_OUT_SHOWN = 4


def held_out_prompts(config: TrainConfig, count: int) -> list[list[dict]]:
    """The first few validation records, as the conversation up to their last reply."""
    conversations = list(load_conversations(config.data_path, data_options(config)))
    is_eval = split_records(len(conversations), config.eval_split, config.seed)
    chats = [c.as_chat() for c, held in zip(conversations, is_eval) if held][:count]
    return [chat[:max(i for i, m in enumerate(chat) if m["role"] == "assistant")] + [chat[-1]] for chat in chats]


def wrap(label: str, text: str) -> str:
    return textwrap.fill(text, 100, initial_indent=label, subsequent_indent=" " * 12)


def demo(argv: list[str]) -> int:
    hf_logging.disable_progress_bar()
    print("== The multi-turn sample, as it would be trained (trained tokens marked) ==")
    inspect(parse_args(["--data_path", "data/roleplay_conversations.jsonl", "--model_name", "smollm2",
                        "--examples", "1"], InspectConfig))
    config = parse_args(DEMO_DEFAULTS + argv)
    print(f"\n== Fine-tuning {config.model_name} on {config.data_path} ==")
    run = setup(config)
    prompts = held_out_prompts(config, HELD_OUT_SHOWN)
    base_replies = [generate_reply(run.prepared.model, run.tokenizer, chat[:-1]) for chat in prompts]
    print(f"validation before training: loss {validate(run)['eval_loss']:.4f}")
    summary = fit(run)
    best = f"{config.output_dir}/best_model"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(best), AutoTokenizer.from_pretrained(best)
    print(f"\n== Held-out prompts: base model vs fine-tuned ({best}, validation loss "
          f"{summary['best_eval_loss']:.4f}) ==")
    for chat, base in zip(prompts, base_replies):
        print("\n" + wrap("rep:        ", chat[-2]["content"]))
        print(wrap("base:       ", base))
        print(wrap("fine-tuned: ", generate_reply(model, tokenizer, chat[:-1])))
        print(wrap("reference:  ", chat[-1]["content"]))
    return 0


if __name__ == "__main__":
    sys.exit(report_errors(lambda: demo(sys.argv[1:])))
