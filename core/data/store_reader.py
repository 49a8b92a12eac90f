"""The team store (core/store/) as a `--data_path`: its calls (SFT) or judgements (DPO, KTO) as raw records, read
from a snapshot so that a run reads the same rows from start to end and again when it resumes.

A run pins the store's URL once, at its start: `URL#VIEW@CALLS,MESSAGES,JUDGEMENTS:SHA` names the view its
objective reads, the highest id of each table it reads up to, and the start of the sha256 of what it read.
That pinned path is the run's `data_path` in train_config.json; a resumed run reads the same one (rows added
since are not mixed in), and refuses to go on if the rows up to those ids no longer read the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import DataError

SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")
VIEWS = {"sft": "sft", "dpo": "preference", "kto": "kto"}  # --objective -> the records it trains on
PIN = re.compile(r"#(?P<view>sft|preference|kto)@(?P<ids>\d+,\d+,\d+):(?P<sha>[0-9a-f]{16})$")
HASH_CHARS = 16


def is_store_path(data_path: str | Path) -> bool:
    return str(data_path).startswith(SCHEMES)


@dataclass(frozen=True)
class StoreSource:
    url: str
    view: str
    snapshot: tuple[int, int, int] | None  # None: the store as it is now (not pinned)
    sha: str | None = None

    def __str__(self) -> str:
        if self.snapshot is None:
            return self.url
        return f"{self.url}#{self.view}@{','.join(map(str, self.snapshot))}:{self.sha}"


def parse_source(data_path: str | Path) -> StoreSource:
    text = str(data_path)
    pin = PIN.search(text)
    if pin is None:
        if "#" in text.rsplit("/", 1)[-1]:
            raise DataError(f"{text}: a store snapshot is written URL#VIEW@CALLS,MESSAGES,JUDGEMENTS:SHA, as a run "
                            "records it in train_config.json; pass the store's URL alone to read it as it is now")
        return StoreSource(text, "sft", None)
    ids = tuple(int(i) for i in pin["ids"].split(","))
    return StoreSource(text[:pin.start()], pin["view"], ids, pin["sha"])


def open_source(source: StoreSource):
    from core.store import StoreError, open_store
    try:
        return open_store(source.url)
    except StoreError as err:
        raise DataError(f"--data_path: {err}") from None


def read(source: StoreSource) -> tuple[list[tuple[str, dict]], str, tuple[int, int, int]]:
    """(the records, the sha256 of what was read, the snapshot read): the pinned one, or now's."""
    from core.store import Snapshot
    from core.store.records import training_records
    store = open_source(source)
    try:
        snapshot = Snapshot(*source.snapshot) if source.snapshot else store.snapshot()
        records = list(training_records(store, source.view, snapshot))
    finally:
        store.close()
    digest = hashlib.sha256()
    for _, record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    sha = digest.hexdigest()
    if source.sha is not None and sha[:HASH_CHARS] != source.sha:
        raise DataError(f"{source}: the store's rows up to this snapshot no longer read as they did when the run "
                        f"started (sha256 {sha[:HASH_CHARS]}, recorded {source.sha}): they were changed or the "
                        "database was replaced; train a new run (the store's URL alone reads it as it is now)")
    return records, sha, (snapshot.calls, snapshot.messages, snapshot.judgements)


def pin(data_path: str, objective: str, resumed: str | None = None) -> str:
    """The run's pinned store path: the resumed run's own (`resumed`, from its train_config.json) when it reads
    the same store with the same objective, else the given pin, else the store's rows as they are now."""
    source = parse_source(data_path)
    view = VIEWS[objective]
    if resumed and is_store_path(resumed):
        earlier = parse_source(resumed)
        if earlier.url == source.url and earlier.view == view and earlier.snapshot is not None:
            return str(earlier)
    if source.snapshot is not None and source.view == view:
        return str(source)
    records, sha, snapshot = read(StoreSource(source.url, view, source.snapshot))
    if not records:
        raise DataError(f"{source.url}: the store holds nothing --objective {objective} can train on yet "
                        f"({'no call with a reply' if view == 'sft' else 'no judgement'}); practise and judge "
                        "first (train.py team summary shows what it holds)")
    return str(StoreSource(source.url, view, snapshot, sha[:HASH_CHARS]))


def iter_store_records(data_path: str | Path) -> Iterator[tuple[str, object]]:
    yield from read(parse_source(data_path))[0]


def store_sha256(data_path: str | Path) -> str:
    return read(parse_source(data_path))[1]


def store_file(data_path: str | Path) -> Path | None:
    """An SQLite store's file (for the output checks: nothing is written over it); None for a server."""
    url = parse_source(data_path).url
    return Path(url[len("sqlite:///"):]).expanduser() if url.startswith("sqlite:///") else None


def describe_store(data_path: str) -> str:
    """What the store holds, for `inspect`, and the snapshot a run started now would read."""
    source = parse_source(data_path)
    store = open_source(source)
    try:
        counts = store.counts()
    finally:
        store.close()
    kinds = ", ".join(f"{kind} {n}" for kind, n in counts["by_kind"].items())
    calls, messages, judgements = source.snapshot
    return (f"Store: {store.where}: {counts['users']} users, {counts['scenarios']} scenarios, {counts['calls']} calls, "
            f"{counts['messages']} messages, {counts['judgements']} judgements ({kinds})\n"
            f"Snapshot: the {source.view} records of calls up to id {calls}, messages up to {messages}, judgements "
            f"up to {judgements} (sha256 {source.sha}...)")
