"""Checkpoints that are either complete or absent, and everything needed to continue a run exactly.

A checkpoint directory is a complete Hugging Face model directory (safetensors weights, config,
generation config, tokenizer with its chat template) plus:
  train_config.json   the run's resolved configuration
  trainer_state.json  step, epoch, position in the epoch, best validation loss, counters, fingerprints
  training_state.pt   optimizer, scheduler, gradient-scaler and RNG states (tensors and plain types
                      only, read back with torch.load(weights_only=True))
It is written into a hidden temporary directory beside its final name and renamed into place when
complete, so a crash mid-save leaves no directory that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

STATE_FILE = "trainer_state.json"
TENSORS_FILE = "training_state.pt"
CONFIG_FILE = "train_config.json"
_NAME = re.compile(r"^(checkpoint-\d+|epoch_\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message says which and why."""


@dataclass
class TrainState:
    step: int = 0                 # optimizer steps completed
    epoch: int = 0                # current epoch, counted from 0
    batch_in_epoch: int = 0       # index of the next micro-batch of this epoch
    best_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    bad_steps_in_row: int = 0
    bad_steps_total: int = 0
    window_loss: float = 0.0      # sum of token losses since the last log line
    window_tokens: int = 0        # trained tokens since the last log line
    window_seen: int = 0          # real (non-padding) tokens since the last log line
    tokens_seen: int = 0


def save_model_dir(target: Path, model, tokenizer, extra_files: dict[str, str] | None = None,
                   tensors: dict | None = None) -> None:
    """Write a loadable model directory atomically (temporary sibling, then rename)."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if tensors is not None:
            torch.save(tensors, tmp / TENSORS_FILE)
        for name, text in (extra_files or {}).items():  # trainer_state.json goes last: it marks completeness
            (tmp / name).write_text(text)
        _replace_dir(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write {target}: {err.strerror or err}; earlier checkpoints are intact"
                              ) from None


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; an existing `target` is moved aside first and removed only afterwards."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(target: Path, model, tokenizer, config, state: TrainState, fingerprint: dict,
                    optimizer, scheduler, scaler, rng_state: dict) -> None:
    tensors = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "scaler": scaler.state_dict(), "rng": rng_state}
    save_model_dir(target, model, tokenizer, tensors=tensors, extra_files={
        CONFIG_FILE: json.dumps(config.to_dict(), indent=2),
        STATE_FILE: json.dumps({"state": asdict(state), "fingerprint": fingerprint}, indent=2)})


def load_checkpoint(path: Path) -> tuple[TrainState, dict, dict, dict]:
    """(state, fingerprint, saved config, tensors) of a complete checkpoint."""
    if not (path / STATE_FILE).is_file() or not (path / TENSORS_FILE).is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no {STATE_FILE} or {TENSORS_FILE}); "
                              "pass a checkpoint-N/ or epoch_N/ directory, or 'auto'")
    saved = json.loads((path / STATE_FILE).read_text())
    config = json.loads((path / CONFIG_FILE).read_text())
    tensors = torch.load(path / TENSORS_FILE, weights_only=True, map_location="cpu")
    return TrainState(**saved["state"]), saved["fingerprint"], config, tensors


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint-N/ and epoch_N/, oldest first."""
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if _NAME.match(path.name) and (path / STATE_FILE).is_file() and (path / TENSORS_FILE).is_file():
                step = json.loads((path / STATE_FILE).read_text())["state"]["step"]
                found.append((step, path))
    return sorted(found, key=lambda item: (item[0], item[1].name.startswith("epoch_")))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def rotate_checkpoints(output_dir: Path, keep: int, protected: set[Path]) -> list[Path]:
    """Delete all but the `keep` newest checkpoint-N/, never one in `protected`; return what was deleted."""
    steps = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*") if _NAME.match(p.name))
    protected = {p.resolve() for p in protected}
    deleted = []
    for _, path in steps[:-keep] if keep else []:
        if path.resolve() not in protected:
            shutil.rmtree(path)
            deleted.append(path)
    return deleted


def recover_interrupted_swap(target: Path) -> None:
    """If a crash hit between the two renames of `_replace_dir`, put the old directory back."""
    if target.exists():
        return
    leftovers = sorted(target.parent.glob(f".{target.name}.old-*"))
    if leftovers:
        leftovers[-1].rename(target)
