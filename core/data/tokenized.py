"""Tokenise a whole data file into flat on-disk arrays, streamed in bounded memory and cached.

Layout of a cache entry (one directory, renamed into place only when complete):
  ids.bin      int32, every sequence's token ids end to end (raw, memory-mapped)
  trained.bin  bool, whether each token carries loss (raw, memory-mapped)
  offsets.npy  int64, sequence i is ids[offsets[i]:offsets[i+1]]
  records.npy  int64, the record each sequence came from (the split is by record)
  hashes.npy   uint64, a content hash per record (duplicate detection)
  prompts.jsonl        per record: where it is, the messages before its last trained reply, that reply
  prompt_offsets.npy   int64, record r's line is prompts.jsonl[prompt_offsets[r]:prompt_offsets[r+1]]
                       (samples, `evaluate` and the roleplay metrics read records here, not from the data file)
  summary.json counts for the run summary and `inspect`
The key covers the data files' bytes and their formats (the extension decides how bytes are read), the
tokenizer, its chat template and every formatting option, so a second run with the same inputs
starts immediately and any change re-tokenises.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.data.chat_format import ChatEncoder, FormatStats
from core.data.files import data_files, data_format, source_sha256
from core.dataset import DataOptions, LoadStats, load_conversations
from core.utils import atomic_directory, remove_stale_temporaries, stage

FORMAT_VERSION = 5
TOKEN_ARRAYS = {"ids": np.int32, "trained": np.bool_}  # written as they are produced: raw files, no header
CHUNK_RECORDS = 512
PROMPTS_FILE = "prompts.jsonl"


@dataclass
class TokenizedData:
    ids: np.ndarray
    trained: np.ndarray
    offsets: np.ndarray
    records: np.ndarray
    hashes: np.ndarray
    summary: dict
    data_hash: str
    prompt_offsets: np.ndarray | None = None
    entry: Path | None = None

    def prompts(self, records) -> list[dict]:
        """Records' {"where", "messages" (before the last trained reply), "reference" (that reply)}, in order given."""
        out = []
        with open(self.entry / PROMPTS_FILE, "rb") as handle:
            for record in records:
                handle.seek(int(self.prompt_offsets[record]))
                out.append(json.loads(handle.read(int(self.prompt_offsets[record + 1] - self.prompt_offsets[record]))))
        return out

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.ids[start:end], self.trained[start:end]


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    digest.update((tokenizer.chat_template or "").encode())
    digest.update(repr(sorted(tokenizer.added_tokens_decoder.items())).encode())
    return digest.hexdigest()


def tokenize_file(path: str | Path, tokenizer, options: DataOptions, max_length: int,
                  cache_root: Path, progress: bool = True, data_hash: str | None = None) -> TokenizedData:
    """Load the cached arrays for this exact input, or build them (streaming) and cache them.

    `data_hash` is the file's sha256 where the caller has it already (a large file is read once).
    """
    files = data_files(path)
    data_hash = data_hash or source_sha256(path)
    key = hashlib.sha256(json.dumps({
        "data": data_hash, "formats": [data_format(f) for f in files], "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "options": asdict(options), "version": FORMAT_VERSION}, sort_keys=True).encode()).hexdigest()[:20]
    entry = cache_root / "tokens" / key
    remove_stale_temporaries(entry.parent)  # entries an earlier run was building when it was killed
    if not (entry / "summary.json").is_file():
        _build(path, tokenizer, options, max_length, entry, progress)
    return _open(entry, data_hash)


def _open(entry: Path, data_hash: str) -> TokenizedData:
    arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r")
              for name in ("offsets", "records", "hashes", "prompt_offsets")}
    for name, dtype in TOKEN_ARRAYS.items():
        path = entry / f"{name}.bin"
        arrays[name] = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype)
    return TokenizedData(**arrays, summary=json.loads((entry / "summary.json").read_text()), data_hash=data_hash,
                         entry=entry)


def _record_hash(conversation) -> int:
    text = json.dumps(conversation.as_chat(), ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _prompt_line(conversation) -> bytes:
    prompt, reference = conversation.before_last_reply()
    line = {"where": conversation.where, "messages": prompt, "reference": reference}
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


def _build(path, tokenizer, options: DataOptions, max_length: int, entry: Path, progress: bool) -> None:
    with stage(f"tokenising {path}", "the tokenised cache entry was not written (its temporary was removed)"), \
            atomic_directory(entry) as tmp:
        _write_arrays(path, tokenizer, options, max_length, tmp, progress)


def _write_arrays(path, tokenizer, options: DataOptions, max_length: int, tmp: Path, progress: bool) -> None:
    encoder = ChatEncoder(tokenizer, max_length, options.special_tokens)
    load_stats, format_stats = LoadStats(), FormatStats()
    offsets, records, hashes = array("q", [0]), array("q"), array("Q")  # 8 bytes a sequence, not a Python object
    prompt_offsets = array("q", [0])
    roles: dict[str, int] = {}
    multi_turn = 0
    with open(tmp / "ids.bin", "wb") as ids_out, open(tmp / "trained.bin", "wb") as trained_out, \
            open(tmp / PROMPTS_FILE, "wb") as prompts_out, \
            tqdm(desc="Tokenising", unit=" records", disable=None if progress else True, mininterval=1.0) as bar:
        conversations = load_conversations(path, options, load_stats)
        while chunk := list(islice(conversations, CHUNK_RECORDS)):
            for conversation, encoded in zip(chunk, encoder.encode_many(chunk)):
                format_stats.add(encoded)
                record = len(hashes)
                hashes.append(_record_hash(conversation))
                prompt_offsets.append(prompt_offsets[-1] + prompts_out.write(_prompt_line(conversation)))
                for message in conversation.messages:
                    roles[message.role] = roles.get(message.role, 0) + 1
                multi_turn += sum(m.role == "assistant" for m in conversation.messages) > 1
                for sequence in encoded.sequences:
                    np.asarray(sequence.input_ids, dtype=np.int32).tofile(ids_out)
                    np.asarray(sequence.trained, dtype=np.bool_).tofile(trained_out)
                    offsets.append(offsets[-1] + len(sequence.input_ids))
                    records.append(record)
            bar.update(len(chunk))
    np.save(tmp / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    np.save(tmp / "records.npy", np.frombuffer(records, dtype=np.int64))
    np.save(tmp / "hashes.npy", np.frombuffer(hashes, dtype=np.uint64))
    np.save(tmp / "prompt_offsets.npy", np.frombuffer(prompt_offsets, dtype=np.int64))
    stats = asdict(format_stats)
    stats["end_of_turn_ids"] = sorted(encoder.end_of_turn_ids)
    summary = {"load": asdict(load_stats), "format": stats, "messages_by_role": roles,
               "multi_turn_records": multi_turn, "max_length": max_length}
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1))


def split_records(n_records: int, eval_split: float, seed: int) -> np.ndarray:
    """A boolean mask of held-out records, deterministic in (n_records, eval_split, seed)."""
    is_eval = np.zeros(n_records, dtype=bool)
    n_eval = int(round(n_records * eval_split))
    if eval_split > 0 and n_records > 1:
        n_eval = min(max(n_eval, 1), n_records - 1)
    is_eval[np.random.default_rng(seed).permutation(n_records)[:n_eval]] = True
    return is_eval


def split_sequences(data: TokenizedData, eval_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation sequence indices; all sequences of one record land on the same side."""
    is_eval = split_records(len(data.hashes), eval_split, seed)[np.asarray(data.records)]
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)
