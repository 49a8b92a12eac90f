"""Preference records (pairs for DPO, labelled replies for KTO) tokenised into the same flat, cached arrays as
SFT data (core/data/tokenized.py), plus which sequence is a good reply and which form a pair.

Record formats, detected per record and mixable in one file (a feedback file from practice holds all):
  {"messages": [...context...], "chosen": "...", "rejected": "..."}                  a pair
  {"prompt": [...messages...], "chosen": [...messages...], "rejected": [...]}        TRL's conversational pair
  {"messages": [...context...], "completion": "...", "label": true|false}            a labelled reply (KTO)
  {"prompt": [...messages...], "completion": [...messages...], "label": true|false}  TRL's conversational KTO
Any of them may carry "meta" (who judged, when, with which model: kept, not trained). A record in one of
the SFT formats (core/dataset.py) is counted and not used. The context ends where the reply starts; the
reply alone carries loss (the persona and the rep's turns never do), exactly as SFT masks it.

Each pair becomes two sequences, chosen then rejected, side by side; each labelled reply one sequence.
A pair also counts as one good and one bad reply for KTO (TRL's convention).
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np

from core.data.chat_format import ChatEncoder, FormatStats
from core.data.files import data_files, data_format, iter_raw_records, source_sha256
from core.data.tokenized import TokenizedData, tokenizer_fingerprint
from core.dataset import (
    Conversation,
    DataOptions,
    Message,
    chat_messages,
    check_structure,
    parse_record,
    refuse_unknown_keys,
)
from core.errors import DataError
from core.utils import atomic_directory

FORMAT_VERSION = 1
PAIR, LABEL, SFT = "pair", "label", "sft"
KEYS = {PAIR: ("messages", "prompt", "chosen", "rejected", "meta"),
        LABEL: ("messages", "prompt", "completion", "label", "meta")}
CHUNK_RECORDS = 256
JUDGEMENTS = ("good", "bad", "rewrite", "pick")


def judgement_record(kind: str, context: list[dict], reply: str, meta: dict, text: str = "", other: str = "") -> dict:
    """The record a practice judgement becomes, in the formats this module reads: the one schema of the feedback
    file. good/bad: a labelled reply; rewrite: `text` chosen over the reply; pick: the reply chosen over `other`."""
    if kind in ("good", "bad"):
        return {"messages": context, "completion": reply, "label": kind == "good", "meta": meta}
    if kind == "rewrite":
        return {"messages": context, "chosen": text, "rejected": reply, "meta": meta}
    if kind == "pick":
        return {"messages": context, "chosen": reply, "rejected": other, "meta": meta}
    raise ValueError(f"unknown judgement {kind!r}; the judgements are {', '.join(JUDGEMENTS)}")


def is_judgement(record: object, options: DataOptions) -> bool:
    """A pair or a labelled reply that preference tuning accepts (what every line of a feedback file is)."""
    try:
        return parse_judged("", record, options).kind != SFT
    except DataError:
        return False


@dataclass(kw_only=True)
class PreferenceData(TokenizedData):
    desirable: np.ndarray  # bool per sequence: a chosen or good reply
    pairs: np.ndarray      # int64 per pair: its chosen sequence (the rejected one follows it)


@dataclass
class Judged:
    """One record: its conversations (context + reply), each with whether the reply is the good one."""
    kind: str
    replies: list[tuple[Conversation, bool]]


def record_kind(where: str, record: object) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "chosen" in record or "rejected" in record:
        return PAIR
    if "completion" in record or "label" in record:
        return LABEL
    return SFT


def _context(where: str, record: dict, options: DataOptions) -> list[Message]:
    if ("messages" in record) == ("prompt" in record):
        raise DataError(f"{where}: a preference record needs its context in 'messages' (or TRL's 'prompt'), "
                        "exactly one of them")
    name = "messages" if "messages" in record else "prompt"
    return chat_messages(where, record[name], "messages", options.allow_extra_keys, name=name)


def _reply(where: str, record: dict, key: str, conversational: bool, options: DataOptions) -> list[Message]:
    """A reply field: a string, or (TRL's conversational format, with 'prompt') a list of messages."""
    if key not in record:
        raise DataError(f"{where}: missing {key!r}")
    value = record[key]
    if isinstance(value, str) and not conversational:
        if not value.strip():
            raise DataError(f"{where}: {key!r} is empty")
        return [Message("assistant", value)]
    if conversational and isinstance(value, list):
        messages = chat_messages(where, value, "messages", options.allow_extra_keys, name=key)
        if not messages or messages[-1].role != "assistant":
            raise DataError(f"{where}: {key!r} must end with an assistant message")
        return messages
    wanted = "a list of messages (with 'prompt')" if conversational else "a string"
    raise DataError(f"{where}: {key!r} must be {wanted}, got {type(value).__name__}")


def _conversation(where: str, context: list[Message], reply: list[Message], options: DataOptions) -> Conversation:
    """Context and reply as one conversation in which only the reply's last message is trained."""
    messages = [replace(m, train=False) for m in context + reply[:-1]] + [replace(reply[-1], train=True)]
    conversation = Conversation(messages, where)
    check_structure(conversation, replace(options, train_on="last_assistant"))
    return conversation


def parse_judged(where: str, record: object, options: DataOptions) -> Judged:
    """Validate one record: a pair, a labelled reply, or an SFT record (returned with no replies)."""
    kind = record_kind(where, record)
    if kind == SFT:
        parse_record(where, record, options)  # still a valid SFT record, or its one-line error
        return Judged(SFT, [])
    if not options.allow_extra_keys:
        refuse_unknown_keys(where, record, KEYS[kind])
    context = _context(where, record, options)
    conversational = "prompt" in record
    if kind == PAIR:
        chosen = _reply(where, record, "chosen", conversational, options)
        rejected = _reply(where, record, "rejected", conversational, options)
        if [m.content for m in chosen] == [m.content for m in rejected]:
            raise DataError(f"{where}: 'chosen' and 'rejected' are the same reply; a pair needs two different ones")
        return Judged(PAIR, [(_conversation(where, context, chosen, options), True),
                             (_conversation(where, context, rejected, options), False)])
    label = record.get("label")
    if not isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be true (a good reply) or false (a bad one), got {label!r}")
    completion = _reply(where, record, "completion", conversational, options)
    return Judged(LABEL, [(_conversation(where, context, completion, options), label)])


def count_usable(data_path: str | Path, objective: str, options: DataOptions) -> dict:
    """Validate every record and count them by kind; refuse a file with nothing `objective` can train on.

    Run before the model loads, so a wrong file costs seconds, not a model load.
    """
    counts = {PAIR: 0, LABEL: 0, SFT: 0}
    for where, raw in iter_raw_records(data_path):
        counts[parse_judged(where, raw, options).kind] += 1
    usable = counts[PAIR] if objective == "dpo" else counts[PAIR] + counts[LABEL]
    if not usable:
        wanted = ("pairs ({'messages', 'chosen', 'rejected'} or TRL's {'prompt', 'chosen', 'rejected'})"
                  if objective == "dpo" else "pairs or labelled replies ({'messages', 'completion', 'label'})")
        raise DataError(f"{data_path}: no record --objective {objective} can train on: it needs {wanted}; found "
                        f"{counts[PAIR]} pairs, {counts[LABEL]} labelled replies, {counts[SFT]} SFT records"
                        + (" (train those with --objective sft)" if counts[SFT] else ""))
    return counts


def tokenize_preferences(path: str | Path, tokenizer, options: DataOptions, max_length: int, cache_root: Path,
                         data_hash: str | None = None) -> PreferenceData:
    """Load the cached arrays for this exact input, or build and cache them."""
    files = data_files(path)
    data_hash = data_hash or source_sha256(path)
    key = hashlib.sha256(json.dumps({
        "data": data_hash, "formats": [data_format(f) for f in files], "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length, "options": asdict(options), "preference_version": FORMAT_VERSION},
        sort_keys=True).encode()).hexdigest()[:20]
    entry = cache_root / "preferences" / key
    if not (entry / "summary.json").is_file():
        with atomic_directory(entry) as tmp:
            _write(path, tokenizer, options, max_length, tmp)
    arrays = {name: np.load(entry / f"{name}.npy") for name in ("offsets", "records", "hashes", "desirable", "pairs")}
    ids, trained = np.fromfile(entry / "ids.bin", dtype=np.int32), np.fromfile(entry / "trained.bin", dtype=np.bool_)
    return PreferenceData(ids=ids, trained=trained, **arrays, summary=json.loads((entry / "summary.json").read_text()),
                          data_hash=data_hash)


def _write(path, tokenizer, options: DataOptions, max_length: int, tmp: Path) -> None:
    encoder, format_stats = ChatEncoder(tokenizer, max_length, options.special_tokens), FormatStats()
    offsets, records, hashes = array("q", [0]), array("q"), array("Q")
    desirable, pairs = array("b"), array("q")
    kinds = {PAIR: 0, LABEL: 0, SFT: 0}
    roles: dict[str, int] = {}
    stats = {"merged_records": 0, "system_added": 0, "multi_turn": 0}
    with open(tmp / "ids.bin", "wb") as ids_out, open(tmp / "trained.bin", "wb") as trained_out:
        raw_records = iter_raw_records(path)
        while chunk := [parse_judged(where, raw, options) for where, raw in islice(raw_records, CHUNK_RECORDS)]:
            conversations = [c for judged in chunk for c, _ in judged.replies]
            encoded = iter(encoder.encode_many(conversations))
            for judged in chunk:
                record = len(hashes)
                kinds[judged.kind] += 1
                text = json.dumps([[c.as_chat(), good] for c, good in judged.replies], ensure_ascii=False)
                hashes.append(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little"))
                if judged.kind == PAIR:
                    pairs.append(len(offsets) - 1)
                for index, (conversation, good) in enumerate(judged.replies):
                    if index == 0:
                        for message in conversation.messages:
                            roles[message.role] = roles.get(message.role, 0) + 1
                        stats["merged_records"] += conversation.merged > 0
                        stats["system_added"] += conversation.system_added
                        stats["multi_turn"] += sum(m.role == "assistant" for m in conversation.messages) > 1
                    result = next(encoded)
                    format_stats.add(result)
                    (sequence,) = result.sequences  # one trained reply: one sequence
                    np.asarray(sequence.input_ids, dtype=np.int32).tofile(ids_out)
                    np.asarray(sequence.trained, dtype=np.bool_).tofile(trained_out)
                    offsets.append(offsets[-1] + len(sequence.input_ids))
                    records.append(record)
                    desirable.append(good)
    for name, values, dtype in (("offsets", offsets, np.int64), ("records", records, np.int64),
                                ("hashes", hashes, np.uint64), ("desirable", desirable, np.int8),
                                ("pairs", pairs, np.int64)):
        np.save(tmp / f"{name}.npy", np.frombuffer(values, dtype=dtype).astype(bool if name == "desirable" else dtype))
    fmt = asdict(format_stats)
    fmt["end_of_turn_ids"] = sorted(encoder.end_of_turn_ids)
    good = int(np.frombuffer(desirable, dtype=np.int8).sum())
    summary = {"load": {"records": len(hashes), "merged_records": stats["merged_records"],
                        "system_added": stats["system_added"],
                        "formats": {name: n for name, n in (("pairs", kinds[PAIR]), ("labelled replies", kinds[LABEL]),
                                                            ("sft (not used)", kinds[SFT])) if n}},
               "format": fmt, "messages_by_role": roles, "multi_turn_records": stats["multi_turn"],
               "max_length": max_length,
               "preferences": {"pairs": kinds[PAIR], "labelled": kinds[LABEL], "sft_records": kinds[SFT],
                               "good_replies": good, "bad_replies": len(desirable) - good}}
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
