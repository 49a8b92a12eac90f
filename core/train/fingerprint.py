"""A run's fingerprint: the data's hash and the options that change the run, in run.json and every checkpoint.

A checkpoint resumes only into a run with the same fingerprint (unless `--force_resume`), and an output
directory holding another fingerprint belongs to another run (core/train/output_dir.py).
"""

from __future__ import annotations

from core.config import TrainConfig, run_options
from core.errors import CheckpointError


def run_fingerprint(data_sha256: str, config: TrainConfig, plan, processes: int) -> dict:
    """The request's options that change the run, with the batch budget as the plan resolved it on this device."""
    return {"data_sha256": data_sha256,
            "config": {**run_options(config), "batch_tokens": plan.batch_tokens, "processes": processes}}


def fingerprint_differences(before: dict, now: dict) -> list[str]:
    """What differs between two run fingerprints, one phrase per difference.

    A key the older fingerprint lacks (an option added since) counts as its default, which is how
    the older code behaved; `processes` is the number of training processes.
    """
    differences = []
    if before.get("data_sha256") != now["data_sha256"]:
        differences.append(f"data file (sha256 {str(before.get('data_sha256'))[:12]} -> {now['data_sha256'][:12]})")
    implicit = {**run_options(TrainConfig()), "processes": 1}
    saved = before.get("config")
    old, new = {**implicit, **(saved if isinstance(saved, dict) else {})}, {**implicit, **now["config"]}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            name = key if key == "processes" else f"--{key}"
            differences.append(f"{name} {old.get(key)!r} -> {new.get(key)!r}")
    return differences


def check_resumable(path, saved: dict, fingerprint: dict, force: bool, log=print) -> None:
    """Refuse to resume a checkpoint (at `path`, with fingerprint `saved`) written with other data or options,
    unless forced."""
    differences = fingerprint_differences(saved, fingerprint)
    if not differences:
        return
    message = f"{path} was written with different inputs: {'; '.join(differences)}"
    if not force:
        raise CheckpointError(message + ". The resumed run would not match the original: restore them, or train "
                              "into another --output_dir (or pass --overwrite_output_dir); --force_resume continues "
                              "from this checkpoint anyway, for changes made on purpose")
    log(f"Warning: {message}; continuing because of --force_resume")
