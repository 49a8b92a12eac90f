"""The one check every writing command makes before any work: its output may not harm what it did not create.

An output path is refused when it is one of the command's inputs, lies inside an input directory, holds an
input, or already exists without being a previous output of the same command (so replacing it would destroy
the user's files); and when it cannot be created or written. Each refusal is one `ConfigError` line naming
the option, the path and what to do. Replacing a previous output stays the command's job, done atomically
(`core.utils.atomic_directory`, `atomic_file`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError


@dataclass(frozen=True)
class Input:
    """A path the command reads: `option` names it in messages; `own_subfolders` may hold outputs (export's
    default MODEL/export) because the input is read by file name, not by listing."""

    option: str
    path: Path
    own_subfolders: tuple[str, ...] = ()


def local_inputs(option: str, value: str) -> list[Input]:
    """The input an option names when it is a local path (a model may also be a hub id or an alias)."""
    return [Input(option, Path(value))] if value and Path(value).expanduser().exists() else []


def check_output(option: str, output: Path, inputs: Iterable[Input], is_previous: Callable[[Path], bool],
                 what: str, replaces: bool = True) -> None:
    """Refuse, before any work, an output that would overwrite or mix with what the command did not create.

    `is_previous(path)` says whether an existing path is an earlier output of this command (`what` names
    such an output in the message: "the output of a training run"). `replaces` False: the command only adds
    its own entries inside the path (a cache), so an input under it is safe.
    """
    target = _absolute(output)
    for given in inputs:
        source = _absolute(given.path)
        if target == source:
            raise ConfigError(f"{option} {output} is also the input {given.option}; writing it would destroy "
                              f"the input: choose another {option}")
        if _inside(target, source) and target.relative_to(source).parts[0] not in given.own_subfolders:
            raise ConfigError(f"{option} {output} lies inside the input {given.option} {given.path}; its files "
                              f"would mix with the input: choose an {option} outside it")
        if replaces and _inside(source, target):
            raise ConfigError(f"{option} {output} holds the input {given.option} {given.path}, which writing it "
                              f"could destroy: choose another {option}")
    if target.exists() and not is_previous(target):
        kind = "directory" if target.is_dir() else "file"
        raise ConfigError(f"{option} {output} is an existing {kind} that is not {what}; it is left as it is: "
                          f"choose a new {option} (or an empty directory)")
    check_writable(option, output)


def check_cache_dir(cache_dir: Path, inputs: Iterable[Input]) -> None:
    """The cache adds entries of its own (tokens/, gguf/): it may not be an input or lie inside one (its
    summary.json files would become data), and must be writable; any existing directory will do."""
    check_output("--cache_dir", cache_dir, inputs, Path.is_dir, "a directory", replaces=False)


def check_writable(option: str, path: Path) -> None:
    """The path (or the nearest directory above it that exists) can be written: under a file, a read-only
    mount or a directory without write permission is refused now, not after the model has loaded."""
    given = existing = Path(os.path.abspath(Path(path).expanduser()))  # unresolved: a broken link on the way
    while not existing.exists():
        if existing.is_symlink():
            what = "a loop of symbolic links" if _loops(existing) else "a broken symbolic link"
            raise ConfigError(f"{option} {path}: {existing} is {what}; fix it or choose another path")
        existing = existing.parent
    if existing != given and not existing.is_dir():
        raise ConfigError(f"{option} {path} cannot be created: {existing} is a file, not a directory")
    directory = existing if existing.is_dir() else existing.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only(directory) else "is not writable by this user"
        raise ConfigError(f"{option} {path} cannot be written: {directory} {reason}; choose another {option}")


def _loops(link: Path) -> bool:
    try:
        os.stat(link)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def _read_only(directory: Path) -> bool:
    return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)


def _absolute(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _inside(path: Path, directory: Path) -> bool:
    return path != directory and path.is_relative_to(directory)
