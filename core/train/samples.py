"""Watch it learn: at each evaluation, the model's replies to a fixed handful of validation prompts.

The prompts are the first `--sample_prompts` validation records, each cut before its last trained
reply (the reference). Every evaluation appends one line to `samples.jsonl`: the step and, per
prompt, the greedy reply and one sampled with a fixed seed; step 0 is the base model, before training.
All prompts' greedy and sampled replies are generated as one batch, with the KV cache; the
line also holds the seconds they took and their roleplay metrics (core/data/roleplay_metrics.py), the
role judge learnt from the training split's turns.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.data.roleplay_metrics import ROLE_JUDGE_METHOD, RoleJudge, reply_metrics, role_judge, summarise
from core.data.tokenized import TokenizedData, split_records
from core.model.generation import Sampling, greedy_and_sampled
from core.run_files import SAMPLES_FILE

SAMPLE_SEED = 1234


JUDGE_RECORDS = 2000  # training records the role judge learns from (enough for a bag-of-words judge)


@dataclass
class SamplePrompts:
    """The validation prompts whose replies are followed, and the role judge learnt from the training split."""
    prompts: list[dict] = field(default_factory=list)
    judge: RoleJudge | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)


def validation_prompts(config, data: TokenizedData) -> SamplePrompts:
    """The first `--sample_prompts` held-out records, as prompt and reference, read from the tokenised cache."""
    if not config.sample_prompts or not config.eval_split:
        return SamplePrompts()
    held_out = split_records(len(data.hashes), config.eval_split, config.seed)
    judge = role_judge(data.prompts(np.flatnonzero(~held_out)[:JUDGE_RECORDS]), config.seed)
    return SamplePrompts(data.prompts(np.flatnonzero(held_out)[:config.sample_prompts]), judge)


def sample_plan(config, prompts: SamplePrompts) -> str:
    """The setup log's line: what the samples cost, and how well the role judge agrees with held-out turns."""
    if not prompts:
        return "Samples: none (--sample_prompts 0 or no validation split)"
    judge = prompts.judge
    if judge is None:
        verdict = "none (this objective's prompts come without one)"
    elif judge.accuracy is None:
        verdict = f"{ROLE_JUDGE_METHOD}, accuracy not measured (the training split lacks one side's turns)"
    else:
        verdict = f"{ROLE_JUDGE_METHOD}, accuracy {judge.accuracy:.1%} on {judge.held_out_turns} held-out turns"
    return (f"Samples: {len(prompts)} validation prompt{'s' * (len(prompts) != 1)}, greedy and sampled (one batch, "
            f"KV cache), up to {config.sample_max_new_tokens} tokens, at step 0 and at every evaluation; their "
            f"seconds are in samples.jsonl and their share of the run in report.html. Role judge: {verdict}")


def write_samples(model, tokenizer, prompts: SamplePrompts, step: int, output_dir: Path, max_new_tokens: int) -> None:
    """Generate the greedy and the seeded sampled reply to each prompt, measure them, and append them as one line."""
    started = time.perf_counter()
    conversations = [p["messages"] for p in prompts]
    greedy, sampled = greedy_and_sampled(model, tokenizer, conversations, Sampling(max_new_tokens=max_new_tokens),
                                         SAMPLE_SEED)
    seconds = time.perf_counter() - started
    entries = [{"prompt": p["messages"][-1]["content"] if p["messages"] else "", "reference": p["reference"],
                "greedy": g, "sampled": s} for p, g, s in zip(prompts, greedy, sampled)]
    metrics = {kind: summarise([reply_metrics(r, p["reference"], p["messages"], prompts.judge)
                                for r, p in zip(replies, prompts)], replies)
               for kind, replies in (("greedy", greedy), ("sampled", sampled))}
    line = {"step": step, "seconds": round(seconds, 2), "samples": entries, "metrics": metrics,
            "role_judge": prompts.judge.to_dict() if prompts.judge else None}
    with (output_dir / SAMPLES_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, ensure_ascii=False) + "\n")
