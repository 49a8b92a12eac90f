"""Judgements made while practising, appended at once to a feedback file that preference tuning reads.

Each judgement is one complete JSON line in a format of core/data/preference.py, written with a single
`os.write` on a file opened with O_APPEND: the kernel places each write at the end of the file whole, so
two apps judging at once never interleave, and a crash loses at most the judgement being made, never
half a line. Every line carries "meta": the model's path, the time, where the judgement was made and,
for a comparison, both models (the persona is the conversation's system message).

  good / bad         {"messages": context, "completion": reply, "label": true|false}      (KTO)
  rewrite            {"messages": context, "chosen": rewrite, "rejected": reply}          (DPO)
                     and the rewritten conversation as an SFT record, in the sibling file *.sft.jsonl
  more realistic     {"messages": context, "chosen": picked reply, "rejected": the other}  (DPO)

`train.py --objective dpo --data_path FEEDBACK` (or kto) then trains on them.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

FEEDBACK_FILE = "feedback.jsonl"


def default_feedback_file(model: str) -> Path:
    """Beside the model: `runs/x/best_model` -> `runs/x/feedback.jsonl` (the model directory stays a plain one)."""
    path = Path(model).expanduser()
    return (path.parent if path.exists() else Path.cwd()) / FEEDBACK_FILE


def sft_file(feedback: Path) -> Path:
    return feedback.with_name(feedback.name.removesuffix(".jsonl") + ".sft.jsonl")


def append_line(path: Path, record: dict) -> None:
    """Append `record` as one line with one write; a short write (a full disk) is an error, not half a line."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"only {written} of {len(data)} bytes were written")


def meta(model: str, source: str, **more) -> dict:
    return {"model": str(model), "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source,
            **more}


def context_and_reply(messages: list[dict]) -> tuple[list[dict], str]:
    """A conversation that ends with the prospect's reply, split into what came before and that reply."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("there is no reply to judge yet")
    if not messages[-1]["content"].strip():
        raise ValueError("the reply is empty")
    return messages[:-1], messages[-1]["content"]


def judge(path: Path, messages: list[dict], good: bool, model: str, source: str) -> dict:
    """Thumbs up or down on the last reply: a labelled reply (KTO)."""
    context, reply = context_and_reply(messages)
    record = {"messages": context, "completion": reply, "label": good, "meta": meta(model, source)}
    append_line(path, record)
    return record


def rewrite(path: Path, messages: list[dict], better: str, model: str, source: str) -> dict:
    """What a real prospect would have said instead: a pair (DPO), and the rewritten conversation for SFT."""
    context, reply = context_and_reply(messages)
    if not better.strip() or better.strip() == reply.strip():
        raise ValueError("the rewrite is empty or the same as the reply")
    record = {"messages": context, "chosen": better.strip(), "rejected": reply, "meta": meta(model, source)}
    append_line(path, record)
    append_line(sft_file(path), {"messages": context + [{"role": "assistant", "content": better.strip()}]})
    return record


def prefer(path: Path, context: list[dict], picked: str, other: str, picked_model: str, other_model: str,
           source: str) -> dict:
    """Of two models' replies to the same message, the more realistic one: a pair (DPO)."""
    if picked.strip() == other.strip():
        raise ValueError("the two replies are the same")
    record = {"messages": context, "chosen": picked, "rejected": other,
              "meta": meta(picked_model, source, other_model=str(other_model))}
    append_line(path, record)
    return record
