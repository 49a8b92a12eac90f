"""The files a `--data_path` names, and the raw JSON values in them, each with where it came from.

`--data_path` is one file, a directory (every data file under it, in sorted order), a glob pattern
(`shards/part-*.jsonl.gz`), or a team store's URL (core/data/store_reader.py: no files, records from a
snapshot). A data file is `.jsonl` (one record per line, streamed) or `.json` (a list of records), either
optionally gzip-compressed (`.gz`). Every problem is a `DataError` naming the file
(the shard) and the line or list item, so a bad line in one shard of thousands is found at once.
"""

from __future__ import annotations

import errno
import glob
import gzip
import hashlib
import json
import os
import re
import stat
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from core.data.store_reader import is_store_path, iter_store_records, store_file, store_sha256
from core.errors import DataError
from core.outputs import Input

FORMATS = (".jsonl", ".json")
SUFFIXES = FORMATS + tuple(f"{s}.gz" for s in FORMATS)


def data_format(path: Path) -> str | None:
    """'.jsonl' or '.json' for a data file name (gzip or not), None for anything else."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return next((s for s in FORMATS if name.endswith(s)), None)


def data_files(data_path: str | Path) -> list[Path]:
    """The data files `data_path` names, checked (known format, readable, not empty) before anything reads them."""
    if is_store_path(data_path):
        return []
    path = Path(data_path)
    if any(c in str(data_path) for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in glob.glob(str(data_path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{data_path}: the pattern matches no file")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and data_format(p) and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path} is a directory with no data files in it (.jsonl or .json, optionally .gz)")
    else:
        files = [path]
    for file in files:
        _check_file(file)
    return files


def data_inputs(data_path: str | Path) -> list[Input]:
    """What `--data_path` reads, for the output checks: a directory as a whole (every file that appears under it
    is read), a file, or a pattern's files (and, for a recursive `**` pattern, the folder it searches)."""
    if is_store_path(data_path):
        file = store_file(data_path)
        return [Input("--data_path", file)] if file is not None else []
    path = Path(data_path)
    if any(c in str(data_path) for c in "*?[") and not path.exists():
        root = Path(str(data_path).split("**")[0]) if "**" in str(data_path) else None
        return [Input("--data_path", p) for p in data_files(data_path)] + (
            [Input("--data_path", root)] if root is not None else [])
    return [Input("--data_path", path)]


def _check_file(path: Path) -> None:
    if data_format(path) is None:
        raise DataError(f"{path}: unknown extension {''.join(path.suffixes) or '(none)'!r}; use .jsonl (one record "
                        "per line) or .json (a list of records), optionally gzip-compressed (.gz)")
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(f"{path}: a loop of symbolic links ({err.strerror}); point it at the data file") from None
        if path.is_symlink():
            raise DataError(f"{path}: a broken symbolic link (to {os.readlink(path)}); point it at the data file"
                            ) from None
        raise DataError(f"{path}: no such file") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else \
            "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise DataError(f"{path} is {kind}, not a regular file: the data is read twice (hashed, then tokenised), "
                        "so save it to a file first")
    try:
        path.open("rb").close()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror})") from None
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def source_sha256(data_path: str | Path) -> str:
    """The sha256 of what `data_path` holds: its files' bytes, or the records a store snapshot reads."""
    return store_sha256(data_path) if is_store_path(data_path) else data_sha256(data_files(data_path))


def data_sha256(files: list[Path]) -> str:
    """The sha256 of a single file's bytes; for several, one hash over each one's relative name and sha256."""
    if len(files) == 1:
        return _file_sha256(files[0])
    root = _common_parent(files)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.resolve().relative_to(root)}\0{_file_sha256(file)}\0".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _common_parent(files: list[Path]) -> Path:
    parts = [f.resolve().parts for f in files]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return Path(*common)


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(text: str, where: str) -> object:
    """One JSON value, refusing what json.loads accepts but a record cannot hold: duplicate keys (JSON keeps
    the last, silently), nesting deeper than Python can follow, and lone UTF-16 surrogates (no text has them)."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise DataError(f"{where}: the key {err.key!r} appears twice in one object (JSON would keep only the "
                        "last); keep one") from None
    except RecursionError:
        raise DataError(f"{where}: the JSON is nested too deeply to be a record") from None
    _refuse_surrogates(value, where)
    return value


def _refuse_surrogates(value: object, where: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and (found := _SURROGATE.search(item)):
            raise DataError(f"{where}: the text holds a lone UTF-16 surrogate (\\u{ord(found.group()):04x}, half of "
                            f"an escaped emoji pair) near {item[max(0, found.start() - 20):found.start()]!r}; "
                            "write the character itself or its complete \\uXXXX\\uXXXX pair")


def iter_raw_records(data_path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield (location, parsed JSON value) for each record of each file, streaming JSONL line by line, or of a
    store's snapshot."""
    if is_store_path(data_path):
        yield from iter_store_records(data_path)
        return
    for path in data_files(data_path):
        yield from READERS[data_format(path)](path)


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _decode(raw: bytes, where: str, first: bool = True) -> str:
    """UTF-8 text; a byte-order mark (spreadsheets and Windows tools write one) is accepted at the start."""
    if first and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{where}: the file is UTF-16 text (a Windows 'Unicode' file); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as err:
        at = err.start + (3 if first and raw.startswith(b"\xef\xbb\xbf") else 0)
        raise DataError(f"{where}: not UTF-8 text (byte {raw[at]:#04x} at column {at + 1})") from None


def _iter_json(path: Path) -> Iterator[tuple[str, object]]:
    try:
        with _open(path) as handle:
            data = parse_json(_decode(handle.read(), path), str(path))
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the file ({getattr(err, 'strerror', None) or err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold a list of records, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: the list of records is empty")
    for index, value in enumerate(data):
        yield f"{path} item {index}", value


def cut_short(raw: bytes, first: bool = False) -> bool:
    """A last line that is not complete JSON (or ends inside a UTF-8 character): what a killed write leaves."""
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as err:
        return err.reason == "unexpected end of data"  # only the last character is incomplete
    if not text.strip():
        return False
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return True
    except RecursionError:
        return False  # complete but too deep: parse_json names it
    return False


def _iter_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    """The records of a JSONL file. A last line with no end of line that is not complete JSON is a write cut
    short (an appending program killed mid-line): it is skipped and reported, never read as a record."""
    seen = cut = False
    number = 0
    try:
        with _open(path) as handle:  # bytes: a bad byte is then reported with its line, not as a traceback
            for number, raw in enumerate(handle, start=1):
                where = f"{path} line {number}"
                if not raw.endswith(b"\n") and cut_short(raw, number == 1):
                    print(f"note: {where}: skipped, cut short ({len(raw)} bytes with no end of line: a write was "
                          "interrupted)", file=sys.stderr)
                    cut = True
                    break
                line = _decode(raw, where, first=number == 1)
                if not line.strip():
                    continue
                try:
                    value = parse_json(line, where)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
                seen = True
                yield where, value
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} line {number + 1}: cannot read the file "
                        f"({getattr(err, 'strerror', None) or err})") from None
    if not seen:
        raise DataError(f"{path}: " + ("no complete record: its only line is cut short (a write was interrupted)"
                                       if cut else "file is empty (only blank lines)"))



READERS = {".jsonl": _iter_jsonl, ".json": _iter_json}  # by data_format; a store URL: core/data/store_reader.py
