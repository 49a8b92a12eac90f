"""Watch it learn: at each evaluation, the model's replies to a fixed handful of validation prompts.

The prompts are the first `--sample_prompts` validation records, each cut before its last trained
reply (the reference). Every evaluation appends one line to `samples.jsonl`: the step and, per
prompt, the greedy reply and one sampled with a fixed seed; step 0 is the base model, before training.
All prompts' replies are generated as one batch (greedy) and one more (sampled), with the KV cache.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from core.data.tokenized import split_records
from core.dataset import data_options, load_conversations
from core.model.generation import Sampling, generate_replies
from core.run_files import SAMPLES_FILE

SAMPLE_SEED = 1234


def prompts_from(data_path: str, options, held_out, count: int) -> list[dict]:
    """The first `count` records of `held_out` (a boolean mask over record indices), as prompt and reference."""
    chosen = []
    wanted = (index for index, held in enumerate(held_out) if held)
    targets = set(islice(wanted, count))
    for index, conversation in enumerate(load_conversations(data_path, options)):
        if index in targets:
            prompt, reference = conversation.before_last_reply()
            chosen.append({"messages": prompt, "reference": reference})
        if len(chosen) == len(targets):
            break
    return chosen


def validation_prompts(config, n_records: int) -> list[dict]:
    if not config.sample_prompts or not config.eval_split:
        return []
    return prompts_from(config.data_path, data_options(config), split_records(n_records, config.eval_split,
                                                                              config.seed), config.sample_prompts)


def write_samples(model, tokenizer, prompts: list[dict], step: int, output_dir: Path, max_new_tokens: int) -> None:
    """Generate the greedy and the seeded sampled reply to each prompt and append them as one line."""
    conversations = [p["messages"] for p in prompts]
    greedy = generate_replies(model, tokenizer, conversations, Sampling(max_new_tokens=max_new_tokens, greedy=True))
    sampled = generate_replies(model, tokenizer, conversations, Sampling(max_new_tokens=max_new_tokens),
                               seed=SAMPLE_SEED)
    entries = [{"prompt": p["messages"][-1]["content"] if p["messages"] else "", "reference": p["reference"],
                "greedy": g, "sampled": s} for p, g, s in zip(prompts, greedy, sampled)]
    with (output_dir / SAMPLES_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "samples": entries}, ensure_ascii=False) + "\n")
