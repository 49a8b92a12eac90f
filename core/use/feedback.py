"""The feedback file: a practice session's judgements (core/use/practice.py), appended as JSON lines that
preference tuning reads (`train.py --objective dpo|kto --data_path FEEDBACK`).

  good / bad         {"messages": context, "completion": reply, "label": true|false, "meta": ...}   (KTO)
  rewrite            {"messages": context, "chosen": rewrite, "rejected": reply, "meta": ...}       (DPO)
                     and the rewritten conversation as an SFT record, in the sibling file *.sft.jsonl
  pick               {"messages": context, "chosen": picked reply, "rejected": the other, ...}     (DPO)

"meta" holds the model, the time, where the judgement was made and, for a pick, the other model (the
persona is the conversation's system message). The schema is core/data/preference.py's.

Appending is safe against other writers and against a crash: each record is written under an exclusive
`flock` on a file opened with O_APPEND, all of it before the lock is released; a write cut short by a kill
leaves at most a last line with no end of line, which the reader skips and reports
(core/data/files.py) and the next append removes before writing (that record was never acknowledged).
So an acknowledged judgement is a whole line, whatever its size, and the next one never lands on a torn one.

The file is checked before any model loads like every other output (core/outputs.py): an existing file is
appended to only when every line is a judgement (or, for *.sft.jsonl, a conversation), never inside a
model directory or equal to an input.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from core.data.files import cut_short, iter_raw_records
from core.errors import ConfigError, DataError
from core.outputs import Input, check_output

if TYPE_CHECKING:  # the file is written without the model side loaded (an appending process stays light)
    from core.use.practice import Judgement, PracticeSession

CHUNK = 1 << 16


def sft_file(feedback: Path) -> Path:
    return feedback.with_name(feedback.name.removesuffix(".jsonl") + ".sft.jsonl")


def every_line(path: Path, accepted) -> bool:
    """An existing file whose every record (a cut-short last line aside) is `accepted`; an empty file is."""
    if path.is_file() and path.stat().st_size == 0:
        return True
    try:
        return all(accepted(record) for _, record in iter_raw_records(path))
    except (DataError, OSError):
        return False


def is_feedback_file(path: Path) -> bool:
    from core.config import FormatOptions
    from core.data.preference import is_judgement  # here, so that appending needs neither torch nor numpy
    options = FormatOptions(allow_extra_keys=False, special_tokens="text")
    return every_line(path, lambda record: is_judgement(record, options))


def is_sft_feedback(path: Path) -> bool:
    return every_line(path, lambda record: isinstance(record, dict) and set(record) == {"messages"})


def check_feedback_file(path: Path, inputs: list[Input]) -> None:
    """Refuse, before any model loads, a feedback file (or its *.sft.jsonl sibling) that is an input, lies inside
    one or inside any model directory, or is an existing file of something else."""
    for target, option, is_previous, what in (
            (path, "--feedback_file", is_feedback_file, "a feedback file (every line a judgement)"),
            (sft_file(path), "--feedback_file's sibling", is_sft_feedback, "a file of rewritten conversations")):
        check_output(option, target, inputs, is_previous, what)
        holder = next((d for d in Path(os.path.realpath(target)).parents if is_model_directory(d)), None)
        if holder is not None:
            raise ConfigError(f"{option} {target} lies inside the model directory {holder}; its files would mix "
                              "with the model's: choose a --feedback_file outside it")
    if path.suffix != ".jsonl":
        raise ConfigError(f"--feedback_file {path}: training reads a feedback file by its extension: name it *.jsonl")


def is_model_directory(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        next(path.glob(pattern), None) for pattern in ("*.safetensors", "pytorch_model*.bin", "*.gguf"))


def append_line(path: Path, record: dict) -> None:
    """Append `record` as one whole line (see the module's docstring); the file is created if need be."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        drop_cut_short_line(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)  # releases the lock


def drop_cut_short_line(fd: int) -> None:
    """Start on a fresh line: a last line with no end of line is cut back when a killed writer left it half
    written, and ended when it is whole (a file saved by an editor)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = size  # where the last line starts
    while start > 0:
        low = max(0, start - CHUNK)
        at = os.pread(fd, start - low, low).rfind(b"\n")
        start = low + at + 1 if at >= 0 else low
        if at >= 0:
            break
    if cut_short(os.pread(fd, size - start, start), first=start == 0):
        os.ftruncate(fd, start)
    else:
        os.write(fd, b"\n")


class FeedbackFile:
    """The recorder that appends judgements to a feedback file (calls and messages are not kept: the file
    holds each judgement with its whole context)."""

    def __init__(self, path: Path):
        self.path = path

    def open_call(self, session: PracticeSession) -> None:
        return None

    def message(self, call: None, position: int, role: str, content: str, model: str | None) -> None:
        return None

    def judgement(self, call: None, judgement: Judgement) -> str:
        append_line(self.path, judgement.record())
        if (sft := judgement.sft_record()) is not None:
            append_line(sft_file(self.path), sft)
        return str(self.path)

    def close_call(self, call: None) -> None:
        return None
