"""A data file's conversations: its raw records (files.py) validated one by one (core/dataset.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from core.config import FormatOptions
from core.data.files import iter_raw_records
from core.dataset import Conversation, LoadStats, parse_record


def load_conversations(path: str | Path, options: FormatOptions, stats: LoadStats | None = None
                       ) -> Iterator[Conversation]:
    """Stream validated conversations from a file; the first bad record stops everything with its message."""
    stats = stats if stats is not None else LoadStats()
    for where, raw in iter_raw_records(path):
        conversation, kind = parse_record(where, raw, options)
        stats.records += 1
        stats.formats[kind] = stats.formats.get(kind, 0) + 1
        stats.merged_records += conversation.merged > 0
        stats.system_added += conversation.system_added
        yield conversation
