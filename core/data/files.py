"""The files a `--data_path` names, and the raw JSON values in them, each with where it came from.

`--data_path` is one file, a directory (every data file under it, in sorted order) or a glob pattern
(`shards/part-*.jsonl.gz`). A data file is `.jsonl` (one record per line, streamed) or `.json` (a list
of records), either optionally gzip-compressed (`.gz`). Every problem is a `DataError` naming the file
(the shard) and the line or list item, so a bad line in one shard of thousands is found at once.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from core.errors import DataError

FORMATS = (".jsonl", ".json")
SUFFIXES = FORMATS + tuple(f"{s}.gz" for s in FORMATS)


def data_format(path: Path) -> str | None:
    """'.jsonl' or '.json' for a data file name (gzip or not), None for anything else."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return next((s for s in FORMATS if name.endswith(s)), None)


def data_files(data_path: str | Path) -> list[Path]:
    """The data files `data_path` names, checked (known format, readable, not empty) before anything reads them."""
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


def _check_file(path: Path) -> None:
    if data_format(path) is None:
        raise DataError(f"{path}: unknown extension {''.join(path.suffixes) or '(none)'!r}; use .jsonl (one record "
                        "per line) or .json (a list of records), optionally gzip-compressed (.gz)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        path.open("rb").close()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror})") from None
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


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


def iter_raw_records(data_path: str | Path) -> Iterator[tuple[str, object]]:
    """Yield (location, parsed JSON value) for each record of each file, streaming JSONL line by line."""
    for path in data_files(data_path):
        yield from (_iter_jsonl(path) if data_format(path) == ".jsonl" else _iter_json(path))


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _iter_json(path: Path) -> Iterator[tuple[str, object]]:
    try:
        with _open(path) as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the file ({getattr(err, 'strerror', None) or err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold a list of records, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: the list of records is empty")
    for index, value in enumerate(data):
        yield f"{path} item {index}", value


def _iter_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    seen = False
    number = 0
    try:
        with _open(path) as handle:  # bytes: a bad byte is then reported with its line, not as a traceback
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path} line {number}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                    f"{err.start + 1})") from None
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {number}: invalid JSON ({err.msg} at column {err.colno})") from None
                seen = True
                yield f"{path} line {number}", value
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} line {number + 1}: cannot read the file "
                        f"({getattr(err, 'strerror', None) or err})") from None
    if not seen:
        raise DataError(f"{path}: file is empty (only blank lines)")
