"""Who owns an output directory: one run at a time (a lock), one run's files (run.json), and its logs on resume.

`claim_output_dir` runs before anything loads: it refuses a directory of other files, a path that is or
holds an input, a directory another process is writing (the lock names its PID), and another run's outputs
unless the user resumes or overwrites. `mark_output_dir` records the run once setup has succeeded.
`truncate_logs` cuts the logs back to a resumed checkpoint, dropping a line half-written by a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from pathlib import Path

from core.errors import CheckpointError
from core.outputs import Input, check_output
from core.run_files import (
    CONFIG_FILE,
    DATA_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RUN_FILE,
    RUN_OUTPUTS,
    SAMPLE_CALLS_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
)
from core.train.checkpoint import CHECKPOINT_NAME
from core.train.fingerprint import fingerprint_differences
from core.utils import remove_stale_temporaries

_TEMPORARY = re.compile(r"^\..+\.(tmp|old)-\d+$")
FINISHED = ("completed", "max_steps", "early_stopping")


def is_run_output(path: Path) -> bool:
    """A file or directory a training run writes into its output directory."""
    return path.name in RUN_OUTPUTS or bool(CHECKPOINT_NAME.match(path.name))


def holds_only_run_outputs(output_dir: Path) -> bool:
    """An output directory of a previous run (or an empty one): nothing in it that a run did not write."""
    return output_dir.is_dir() and all(
        is_run_output(p) or p.name == LOCK_FILE or _TEMPORARY.match(p.name) for p in output_dir.iterdir())


def check_output_dir(output_dir: Path, inputs: list[Input]) -> None:
    """The three refusals every writing command makes, and that the directory can be created and written."""
    check_output("--output_dir", output_dir, inputs, holds_only_run_outputs, "the output of a training run")


# One run at a time -------------------------------------------------------------------------------

_held: dict[Path, tuple[int, bool]] = {}  # output directory -> (its lock file's descriptor, created by us)


def lock_output_dir(output_dir: Path) -> None:
    """Hold an exclusive lock on `output_dir` until `unlock_output_dir` or the process ends (the kernel releases
    it, even after kill -9). A second run gets one line naming the process that holds it."""
    key = _key(output_dir)
    if key in _held:
        return
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise CheckpointError(f"--output_dir {output_dir} is in use by another run (process {holder}); wait for it "
                              "to finish, stop it, or choose another --output_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = (fd, created)


def unlock_output_dir(output_dir: Path) -> None:
    """Release the lock; a directory this run created and left with nothing but the lock file is removed."""
    fd, created = _held.pop(_key(output_dir), (None, False))
    if fd is not None:
        _remove_if_unused(output_dir, created)
        os.close(fd)


def _key(output_dir: Path) -> Path:
    """The directory's real path; never raises (a symbolic-link loop, refused by `check_output_dir`, stays as
    it is, so that releasing after that refusal does not replace its one line by a traceback)."""
    return Path(os.path.realpath(output_dir))


def _remove_if_unused(output_dir: Path, created: bool) -> None:
    if created and {p.name for p in output_dir.iterdir()} <= {LOCK_FILE}:
        shutil.rmtree(output_dir, ignore_errors=True)


# Claiming and marking ----------------------------------------------------------------------------

def claim_output_dir(output_dir: Path, fingerprint: dict, resuming: bool, overwrite: bool, log=print) -> None:
    """Make `output_dir` this run's: clean crash leftovers, refuse (or clear) another run's outputs.

    Called with the lock held; `mark_output_dir` writes the run's fingerprint once setup has succeeded.
    """
    removed = remove_stale_temporaries(output_dir)
    if removed:
        log(f"Removed {len(removed)} unfinished temporary directories left by an earlier crash: {', '.join(removed)}")
    earlier = _run_outputs(output_dir)
    if any(p.name != RUN_FILE for p in earlier) and not resuming:  # run.json alone: a run that never started
        if not overwrite:
            raise CheckpointError(_occupied_message(output_dir, fingerprint))
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        log(f"--overwrite_output_dir: removed the earlier run's {len(earlier)} outputs from {output_dir}")


def start_afresh(output_dir: Path, fingerprint: dict, log=print) -> None:
    """`--resume_from_checkpoint auto` found no checkpoint: this run's earlier attempt (stopped before its first
    checkpoint) is replaced by a run from the beginning; another run's outputs, or a finished run, are refused."""
    earlier = [p for p in _run_outputs(output_dir) if p.name != RUN_FILE]
    if not earlier:
        log(f"No checkpoint in {output_dir} yet: starting from the beginning")
        return
    before = _read_json(output_dir / RUN_FILE)
    if before is None or fingerprint_differences(before, fingerprint):
        raise CheckpointError(_occupied_message(output_dir, fingerprint))
    stopped = (_read_json(output_dir / SUMMARY_FILE) or {}).get("stopped")
    if stopped in FINISHED:
        raise CheckpointError(f"--output_dir {output_dir} holds this run, already finished ({stopped}) and with no "
                              "checkpoint to continue from (--save_steps 0 writes none); its model is in best_model/. "
                              "Pass --overwrite_output_dir to train it again")
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log(f"No checkpoint in {output_dir} yet (the earlier attempt stopped before its first): starting from the "
        f"beginning; its {len(earlier)} outputs were removed")


def mark_output_dir(output_dir: Path, fingerprint: dict, config: dict, data_statistics: dict) -> None:
    """Record whose run this directory holds (run.json), its options and plan (`config`) and what its data holds."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")
    (output_dir / DATA_FILE).write_text(json.dumps(data_statistics, indent=2) + "\n")
    (output_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _run_outputs(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if is_run_output(p))


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _occupied_message(output_dir: Path, fingerprint: dict) -> str:
    before = _read_json(output_dir / RUN_FILE)
    if before is not None and not fingerprint_differences(before, fingerprint):
        return (f"--output_dir {output_dir} already holds a run with the same data and options; pass "
                "--resume_from_checkpoint auto to continue it, or --overwrite_output_dir to start again")
    what = "; ".join(fingerprint_differences(before, fingerprint)[:3]) if before else "its origin is unknown"
    return (f"--output_dir {output_dir} holds another run ({what}); choose another --output_dir, or pass "
            "--overwrite_output_dir to delete it and start afresh")


# Logs on resume ----------------------------------------------------------------------------------

def truncate_logs(output_dir: Path, step: int, log=print) -> None:
    """Drop metrics and samples written after the checkpoint, so the resumed run's lines are not doubled.

    A last line cut short by a crash is dropped and reported; a damaged line before it is refused.
    """
    for path in (output_dir / METRICS_FILE, output_dir / SAMPLES_FILE, output_dir / SAMPLE_CALLS_FILE):
        if not path.is_file():
            continue
        kept, lines = [], path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry_step = json.loads(line)["step"]
                if not isinstance(entry_step, int) or isinstance(entry_step, bool):
                    raise TypeError(f"step {entry_step!r}")
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                if number == len(lines):
                    log(f"{path.name}: dropped its last line, cut short by the crash ({len(line)} characters)")
                    continue
                raise CheckpointError(f"{path} line {number} is damaged (not a log entry); remove that line, or "
                                      "pass --overwrite_output_dir to start again") from None
            if entry_step <= step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))
