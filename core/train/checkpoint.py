"""Checkpoints that are either complete or absent, resume, and who owns an output directory.

A checkpoint directory is a complete Hugging Face model directory (safetensors weights, config,
generation config, tokenizer with its chat template) plus:
  train_config.json   the run's resolved configuration
  trainer_state.json  step, epoch, position in the epoch, best validation loss, counters, fingerprint
  training_state.pt   optimizer, scheduler, gradient-scaler and RNG states (tensors and plain types
                      only, read back with torch.load(weights_only=True))
It is written into a hidden temporary directory beside its final name and renamed into place when
complete (core.utils.atomic_directory), so a crash mid-save leaves no directory that looks complete.

The output directory's `run.json` holds the fingerprint of the run that owns it (data hash and the
options marked `changes_run`): a later run with another fingerprint is refused unless it resumes or
overwrites, so two runs never mix their logs and checkpoints.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.config import TrainConfig, run_options
from core.errors import CheckpointError, first_line
from core.run_files import (
    ADAPTER_FILE,
    CONFIG_FILE,
    DATA_FILE,
    METRICS_FILE,
    RUN_FILE,
    RUN_OUTPUTS,
    SAMPLES_FILE,
    STATE_FILE,
    TENSORS_FILE,
    WEIGHTS_FILE,
)
from core.utils import atomic_directory, remove_stale_temporaries

_NAME = re.compile(r"^(checkpoint-\d+|epoch_\d+)$")


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
        reason = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"could not write {target}: {reason}; earlier checkpoints are intact") from None


def save_checkpoint(target: Path, model, tokenizer, config, state: TrainState, fingerprint: dict, tensors: dict,
                    weights: dict | None = None) -> None:
    """A model directory plus the training state: `tensors` holds the optimizer, scheduler, scaler and RNG states."""
    save_model_dir(target, model, tokenizer, tensors=tensors, weights=weights, extra_files={
        CONFIG_FILE: json.dumps(config.to_dict(), indent=2),
        STATE_FILE: json.dumps({"state": asdict(state), "fingerprint": fingerprint}, indent=2)})


def checkpoint_bytes(model: torch.nn.Module, lora: bool) -> tuple[int, int]:
    """(one checkpoint's weights and AdamW state, best_model/'s weights) in bytes, from the parameters;
    the tokenizer files come on top. A LoRA checkpoint holds the adapter, its best_model/ the merged model."""
    params = {id(p): p for p in model.parameters()}.values()  # tied weights are stored once
    full = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return (trainable if lora else full) + 2 * trainable, full


def disk_shortfall(output_dir: Path, per_checkpoint: int, best_model: int, checkpoints: int,
                   epochs: int) -> str | None:
    """A warning when the free disk under `output_dir` cannot hold the checkpoints a run will keep (plus the
    one being written beside the last and best_model/'s swap), or None."""
    needed = (checkpoints + epochs + 1) * per_checkpoint + 2 * best_model
    free = shutil.disk_usage(output_dir).free
    if needed <= free:
        return None
    return (f"Warning: this run's checkpoints need about {_size(needed)} ({checkpoints} checkpoint-N/ and {epochs} "
            f"epoch_N/ of {_size(per_checkpoint)} each, best_model/ {_size(best_model)}), but only {_size(free)} is "
            f"free in {output_dir}: set --save_total_limit or raise --save_steps before the disk fills")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


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
        state = TrainState(**saved["state"])
        fingerprint = saved["fingerprint"]
    except (ValueError, KeyError, TypeError) as err:
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


def _check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as the header says: catches truncation without reading it all."""
    try:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
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
            if _NAME.match(path.name) and (path / STATE_FILE).is_file() and (path / TENSORS_FILE).is_file():
                try:
                    step = int(json.loads((path / STATE_FILE).read_text())["state"]["step"])
                except (ValueError, KeyError, TypeError):
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
    """The checkpoint to resume from: a given path, the newest intact one for 'auto', or None."""
    if not resume_from:
        return None
    if resume_from == "auto":
        found = latest_checkpoint(output_dir, log)
        log(f"Resuming from {found.path}" if found else f"No intact checkpoint in {output_dir}; starting fresh")
        return found
    path = Path(resume_from)
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such directory")
    return load_checkpoint(path)


def fingerprint_differences(before: dict, now: dict) -> list[str]:
    """What differs between two run fingerprints, one phrase per difference.

    A key the older fingerprint lacks (an option added since) counts as its default, which is how
    the older code behaved; `processes` is the number of training processes.
    """
    differences = []
    if before.get("data_sha256") != now["data_sha256"]:
        differences.append(f"data file (sha256 {str(before.get('data_sha256'))[:12]} -> {now['data_sha256'][:12]})")
    implicit = {**run_options(TrainConfig()), "processes": 1}
    old, new = {**implicit, **before.get("config", {})}, {**implicit, **now["config"]}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            name = key if key == "processes" else f"--{key}"
            differences.append(f"{name} {old.get(key)!r} -> {new.get(key)!r}")
    return differences


def check_resumable(restored: Restored, fingerprint: dict, force: bool, log=print) -> None:
    """Refuse to resume a checkpoint written with other data or options, unless forced."""
    differences = fingerprint_differences(restored.fingerprint, fingerprint)
    if not differences:
        return
    message = f"{restored.path} was written with different inputs: {'; '.join(differences)}"
    if not force:
        raise CheckpointError(message + ". The resumed run would not match the original: restore them, or train "
                              "into another --output_dir (or pass --overwrite_output_dir); --force_resume continues "
                              "from this checkpoint anyway, for changes made on purpose")
    log(f"Warning: {message}; continuing because of --force_resume")


def truncate_logs(output_dir: Path, step: int) -> None:
    """Drop metrics and samples written after the checkpoint, so the resumed run's lines are not doubled."""
    for path in (output_dir / METRICS_FILE, output_dir / SAMPLES_FILE):
        if path.is_file():
            lines = [line for line in path.read_text().splitlines()
                     if line.strip() and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in lines))


# The output directory ----------------------------------------------------------------------------

def claim_output_dir(output_dir: Path, fingerprint: dict, resuming: bool, overwrite: bool, log=print) -> None:
    """Check that `output_dir` can be this run's: clean crash leftovers, refuse (or clear) another run's outputs.

    It creates nothing: `mark_output_dir` writes the run's fingerprint once setup has succeeded.
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


def mark_output_dir(output_dir: Path, fingerprint: dict, config, data_statistics: dict) -> None:
    """Record whose run this directory holds (run.json), its resolved options and what its data holds."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")
    (output_dir / DATA_FILE).write_text(json.dumps(data_statistics, indent=2) + "\n")
    config.save(output_dir / CONFIG_FILE)


def _run_outputs(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(p for p in output_dir.iterdir() if p.name in RUN_OUTPUTS or _NAME.match(p.name))


def _occupied_message(output_dir: Path, fingerprint: dict) -> str:
    try:
        before = json.loads((output_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        before = None
    if before is not None and not fingerprint_differences(before, fingerprint):
        return (f"--output_dir {output_dir} already holds a run with the same data and options; pass "
                "--resume_from_checkpoint auto to continue it, or --overwrite_output_dir to start again")
    what = "; ".join(fingerprint_differences(before, fingerprint)[:3]) if before else "its origin is unknown"
    return (f"--output_dir {output_dir} holds another run ({what}); choose another --output_dir, or pass "
            "--overwrite_output_dir to delete it and start afresh")
