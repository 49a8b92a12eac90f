"""Watch it learn: at each evaluation, the model's replies to a fixed handful of validation prompts.

The prompts are the first `--sample_prompts` validation records, each cut before its last trained
reply (the reference). Every evaluation appends one line to `samples.jsonl`: the step and, per
prompt, the greedy reply and one sampled with a fixed seed; step 0 is the base model, before training.
All prompts' replies are generated as one batch (greedy) and one more (sampled), with the KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.data.tokenized import TokenizedData, split_records
from core.model.generation import Sampling, generate_replies
from core.run_files import SAMPLES_FILE

SAMPLE_SEED = 1234


def validation_prompts(config, data: TokenizedData) -> list[dict]:
    """The first `--sample_prompts` held-out records, as prompt and reference, read from the tokenised cache."""
    if not config.sample_prompts or not config.eval_split:
        return []
    held_out = np.flatnonzero(split_records(len(data.hashes), config.eval_split, config.seed))
    return data.prompts(held_out[:config.sample_prompts])


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
