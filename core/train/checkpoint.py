"""Checkpoints that are either complete or absent: writing, reading, rotating, and finding one to resume from.

A checkpoint directory is a complete Hugging Face model directory (safetensors weights, config,
generation config, tokenizer with its chat template) plus:
  train_config.json   the run's options and the plan resolved from them
  trainer_state.json  step, epoch, position in the epoch, best validation loss, counters, fingerprint
  training_state.pt   optimizer, scheduler, gradient-scaler and RNG states (tensors and plain types
                      only, read back with torch.load(weights_only=True))
It is written into a hidden temporary directory beside its final name and renamed into place when
complete (core.utils.atomic_directory), so a crash mid-save leaves no directory that looks complete.
Who owns the output directory is core/train/output_dir.py's concern; the fingerprint a checkpoint carries
is core/train/fingerprint.py's.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from core.errors import CheckpointError, first_line
from core.run_files import (
    ADAPTER_FILE,
    CONFIG_FILE,
    STATE_FILE,
    TENSORS_FILE,
    WEIGHTS_FILE,
)
from core.utils import atomic_directory, unique_parameters

CHECKPOINT_NAME = re.compile(r"^(checkpoint-\d+|epoch_\d+)$")


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
    window_sums: list = field(default_factory=list)  # the objective's metric sums since the last log line


@dataclass
class Restored:
    """What a checkpoint holds besides the model weights."""
    path: Path
    state: TrainState
    fingerprint: dict
    tensors: dict


# Writing -----------------------------------------------------------------------------------------

def save_model_dir(target: Path, model, tokenizer, extra_files: dict[str, str] | None = None,
                   tensors: dict | None = None, weights: dict | None = None, adapter=None) -> None:
    """Write a loadable model directory atomically; any failure leaves the previous one and no leftovers.

    `weights` replaces the model's own state dict (a sharded model's gathered weights, a LoRA model's
    merged ones); `adapter`, a PEFT model, is saved beside them in adapter/.
    """
    try:
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
            if adapter is not None:
                adapter.save_pretrained(tmp / "adapter", safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if tensors is not None:
                torch.save(tensors, tmp / TENSORS_FILE)
            for name, text in (extra_files or {}).items():  # trainer_state.json goes last: it marks completeness
                (tmp / name).write_text(text)
    except Exception as err:  # OSError, torch's RuntimeError, SafetensorError: a full disk wears many types
        reason = getattr(err, "strerror", None) or first_line(err)
        if re.search(r"unexpected pos|StorageFull", reason):  # torch's and safetensors' words for a full disk
            reason = f"No space left on device ({reason})"
        raise CheckpointError(f"could not write {target}: {reason}; earlier checkpoints are intact") from None


def save_checkpoint(target: Path, model, tokenizer, config: dict, state: TrainState, fingerprint: dict, tensors: dict,
                    weights: dict | None = None) -> None:
    """A model directory plus the training state: `tensors` holds the optimizer, scheduler, scaler and RNG states;
    `config` is train_config.json's content (the request and its plan, core/train/plan.py)."""
    save_model_dir(target, model, tokenizer, tensors=tensors, weights=weights, extra_files={
        CONFIG_FILE: json.dumps(config, indent=2),
        STATE_FILE: json.dumps({"state": asdict(state), "fingerprint": fingerprint}, indent=2)})


def checkpoint_bytes(model: torch.nn.Module, lora: bool) -> tuple[int, int]:
    """(one checkpoint's weights and AdamW state, best_model/'s weights) in bytes, from the parameters;
    the tokenizer files come on top. A LoRA checkpoint holds the adapter, its best_model/ the merged model."""
    params = unique_parameters(model)
    full = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return (trainable if lora else full) + 2 * trainable, full


def rotate_checkpoints(output_dir: Path, keep: int, protected: set[Path]) -> list[Path]:
    """Delete all but the `keep` newest checkpoint-N/, never one in `protected`; return what was deleted."""
    steps = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*")
                   if CHECKPOINT_NAME.match(p.name))
    protected = {p.resolve() for p in protected}
    deleted = []
    for _, path in steps[:-keep] if keep else []:
        if path.resolve() not in protected:
            shutil.rmtree(path)
            deleted.append(path)
    return deleted


# Reading -----------------------------------------------------------------------------------------

def load_checkpoint(path: Path) -> Restored:
    """Read a checkpoint's state, refusing with one line anything missing, truncated or unsafe."""
    weights = path / (ADAPTER_FILE if (path / ADAPTER_FILE).is_file() else WEIGHTS_FILE)
    for name in (STATE_FILE, TENSORS_FILE, CONFIG_FILE, weights.name):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} is not a complete training checkpoint (no {name}); pass a checkpoint-N/ "
                                  "or epoch_N/ directory, or 'auto'")
    try:
        saved = json.loads((path / STATE_FILE).read_text())
        json.loads((path / CONFIG_FILE).read_text())
        state = _train_state(saved["state"])
        fingerprint = saved["fingerprint"]
        if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("config", {}), dict):
            raise TypeError("the fingerprint is not a mapping")
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise CheckpointError(f"{path}: {STATE_FILE} or {CONFIG_FILE} is damaged ({type(err).__name__}: {err})"
                              ) from None
    _check_safetensors(weights)
    try:
        tensors = torch.load(path / TENSORS_FILE, weights_only=True, map_location="cpu")
    except Exception as err:  # a truncated zip, a refused pickle global, ...: all mean "do not trust this file"
        reason = first_line(err)
        raise CheckpointError(f"{path / TENSORS_FILE} cannot be read safely ({reason})") from None
    if not isinstance(tensors, dict) or not {"optimizer", "scheduler", "scaler", "rng"} <= tensors.keys():
        raise CheckpointError(f"{path / TENSORS_FILE} does not hold the optimizer, scheduler, scaler and RNG states")
    return Restored(path, state, fingerprint, tensors)


def _train_state(values: dict) -> TrainState:
    """A TrainState from its saved fields, each of the type the loop expects (a hand-edited file can hold any)."""
    state = TrainState(**values)
    for f in fields(TrainState):
        value = getattr(state, f.name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0 if f.type == "int" else (
            value is None or _number(value)) if "None" in f.type else (
            isinstance(value, list) and all(map(_number, value))) if f.type == "list" else _number(value)
        if not ok:
            raise TypeError(f"{f.name} is {value!r}")
    return state


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as the header says: catches truncation without reading it all."""
    try:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > path.stat().st_size:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(header_size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        complete = path.stat().st_size >= 8 + header_size + end
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        complete = False
    if not complete:
        raise CheckpointError(f"{path} is truncated or damaged")


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint-N/ and epoch_N/ with a readable state file, oldest first."""
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if CHECKPOINT_NAME.match(path.name) and (path / STATE_FILE).is_file() and (path / TENSORS_FILE).is_file():
                try:
                    step = int(json.loads((path / STATE_FILE).read_text())["state"]["step"])
                except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
                    step = -1  # damaged: sorted first, and load_checkpoint says why when it is tried
                found.append((step, path))
    return sorted(found, key=lambda item: (item[0], item[1].name.startswith("epoch_")))


def latest_checkpoint(output_dir: Path, log=print) -> Restored | None:
    """The newest checkpoint that loads; each one tried before it (unreadable or newer) is logged with the reason."""
    found = complete_checkpoints(output_dir)
    unreadable = [path for step, path in found if step < 0]  # their step is unknown: tried first, to say why
    for path in unreadable + [path for step, path in reversed(found) if step >= 0]:
        try:
            return load_checkpoint(path)
        except CheckpointError as err:
            log(f"Skipping {path.name}: {err}")
    return None


# Resume ------------------------------------------------------------------------------------------

def find_resume(resume_from: str, output_dir: Path, log=print) -> Restored | None:
    """The checkpoint to resume from: a given path, the newest intact one for 'auto', or None (none yet)."""
    if not resume_from:
        return None
    if resume_from == "auto":
        found = latest_checkpoint(output_dir, log)
        if found:
            log(f"Resuming from {found.path}")
        return found
    path = Path(resume_from)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such directory")
    return load_checkpoint(path)
