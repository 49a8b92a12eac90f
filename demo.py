"""Offline demo: fine-tune SmolLM2-135M-Instruct on the sample persona conversations, then compare replies.

Shows the multi-turn data as it will be trained (trained tokens marked), fine-tunes on the persona
conversations (data/roleplay_conversations.jsonl: each a system prompt stating the prospect's name,
company, head count, budget and timing, then the call) for two epochs (60 steps, sized for a 2-core
CPU: a 24-step run learnt the prospect's side and register but seldom used the persona's facts), prints
validation loss as it falls, and puts the base model's reply beside the fine-tuned model's (greedy, and
sampled as the chat command samples) for a few held-out prompts. Then it samples a reply to every
bot turn of the held-out calls from both models and says how often each names a fact of its persona,
contradicts one, and reads as the prospect, beside the references' own rates (core/data/roleplay_metrics.py).
The run's report.html and samples.jsonl are in runs/demo. Any training option can be appended, e.g.
`python demo.py --max_steps 30` for a shorter run.
"""

from __future__ import annotations

import os
import sys
import textwrap

import numpy as np

from core.cli import inspect_command, prefer_huge_pages, report_errors

prefer_huge_pages()  # before torch loads: it reads the allocator option at its first allocation
from pathlib import Path  # noqa: E402

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from core.config import FormatOptions, option_group, parse_args  # noqa: E402
from core.data.conversations import load_conversations  # noqa: E402
from core.data.roleplay_metrics import reply_metrics, summarise  # noqa: E402
from core.data.tokenized import split_records  # noqa: E402
from core.model.generation import Sampling, generate_replies, generate_reply  # noqa: E402
from core.train.run_setup import setup  # noqa: E402
from core.train.step import validate  # noqa: E402
from core.trainer import fit  # noqa: E402
from core.use.backend import load_for_chat  # noqa: E402
from core.use.chat import repeated_sentence  # noqa: E402
from core.use.report import read_jsonl, write_report  # noqa: E402

DEMO_DEFAULTS = ["--data_path", "data/roleplay_conversations.jsonl", "--model_name", "smollm2", "--output_dir",
                 "runs/demo", "--epochs", "2", "--batch_size", "4", "--lr", "1e-4",
                 "--warmup_ratio", "0.1", "--eval_steps", "30", "--log_steps", "6", "--save_steps", "0",
                 "--overwrite_output_dir", "--sample_prompts", "4", "--sample_max_new_tokens", "48"]
SAMPLE_SEED = 7


def wrap(label: str, text: str) -> str:
    return textwrap.fill(text, 100, initial_indent=label, subsequent_indent=" " * 14)


def demo(argv: list[str]) -> int:
    hf_logging.disable_progress_bar()
    config = parse_args(DEMO_DEFAULTS + argv)
    print("== The persona conversations, as they will be trained (trained tokens marked) ==")
    inspect_command(["--data_path", config.data_path, "--model_name", config.model_name, "--examples", "1"])
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
    persona_share(run, model, tokenizer)
    print(f"\nReport: {write_report(output_dir)}  (samples at every evaluation: {output_dir / 'samples.jsonl'})")
    python = os.path.relpath(sys.executable)  # the virtual environment's python: works from a fresh shell
    print(f"Practise with it: {python} train.py chat --model {best} --scenarios data/scenarios.yaml")
    return 0


def held_out_turns(run) -> list[dict]:
    """Every bot turn of the held-out conversations, as a prompt (the call so far) and its reference: the last turns
    alone are mostly goodbyes, which rarely name a persona fact."""
    config = run.config
    chats = [c.as_chat() for c in load_conversations(config.data_path, option_group(FormatOptions, config))]
    held_out = np.flatnonzero(split_records(len(chats), config.eval_split, config.seed))
    turns = []
    for messages in (chats[i] for i in held_out):
        turns += [{"messages": messages[:i], "reference": m["content"]} for i, m in enumerate(messages)
                  if m["role"] == "assistant" and any(p["role"] == "user" for p in messages[:i])]
    return turns


def persona_share(run, tuned, tokenizer) -> None:
    """Sample a reply at every bot turn of the held-out calls from the base and the fine-tuned model: how often is
    the persona used, against how often the references use it?"""
    config = run.config
    turns = held_out_turns(run)
    chats = [t["messages"] for t in turns]
    base, _ = load_for_chat(config.model_name, config)
    sampling = Sampling(max_new_tokens=config.sample_max_new_tokens)
    print(f"\n== Sampled replies at all {len(chats)} bot turns of the held-out calls: does the bot use its persona? ==")
    for name, replies in (("reference", [t["reference"] for t in turns]),
                          ("base", generate_replies(base, tokenizer, chats, sampling, seed=SAMPLE_SEED)),
                          ("fine-tuned", generate_replies(tuned, tokenizer, chats, sampling, seed=SAMPLE_SEED))):
        m = summarise([reply_metrics(r, t["reference"], t["messages"], run.data.prompts.judge)
                       for r, t in zip(replies, turns)], replies)
        print(f"{name:>11}: names a persona fact in {m.get('persona_mention_share', 0):.0%}, contradicts one in "
              f"{m.get('persona_contradiction_share', 0):.0%}, reads as the prospect in "
              f"{m.get('role_consistency', float('nan')):.0%} (role judge), {m['mean_words']:.0f} words on average")
    print("(a persona fact: a name, number, quarter or month its system prompt states; the role judge is learnt "
          "from the training split's turns)")


if __name__ == "__main__":
    sys.exit(report_errors(lambda: demo(sys.argv[1:])))
