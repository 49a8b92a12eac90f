"""Seeding, device and precision selection, host memory reuse, RNG state, atomic directories and files, and the
stage a command is at (what an interrupt there leaves on disk)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from core.errors import ConfigError


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; an explicit request that cannot be met is an error, not a fallback."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if not available[requested]:
        raise ConfigError(f"--device {requested} was requested but is not available on this machine; "
                          "use --device auto or cpu")
    return torch.device(requested)


def pick_precision(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The autocast dtype: bf16 on GPUs that support it, fp16 on older CUDA GPUs, fp32 on CPU."""
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; use bf16 or fp32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context; weights stay fp32 so that optimizer state and checkpoints are exact."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS; False where that is not possible.

    By default every large tensor is a fresh mmap that the kernel zero-fills page by page on first
    touch and unmaps when the tensor is freed, so each training step on the CPU faults in all its
    activations and gradients again (about a tenth of a step's time for SmolLM2-135M on 2 cores). With
    mmap off and trimming off, the heap grows to the run's peak once and later steps reuse it: the
    process's peak memory barely moves, but it is not handed back until the process ends.
    """
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h; a trim threshold of -1 turns trimming off
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))


def get_rng_state() -> dict:
    """Every RNG the run touches, in types that `torch.load(weights_only=True)` accepts."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def temporary_sibling(target: Path, kind: str) -> Path:
    """The hidden name a directory is built under before it is renamed to `target` (kind: tmp or old)."""
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Build a directory under a hidden temporary name and rename it to `target` only when complete.

    On any exception (a full disk, a second Ctrl-C) the temporary directory is removed and an
    existing `target` is left as it was. An existing `target` is moved aside before the rename and
    deleted only afterwards; `recover_interrupted_swap` undoes a crash between the two renames.
    """
    tmp = temporary_sibling(target, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        old = temporary_sibling(target, "old")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_interrupted_swap(target: Path) -> None:
    """If a crash hit between the two renames of `atomic_directory`, put the old directory back."""
    if target.exists():
        return
    leftovers = sorted(target.parent.glob(f".{target.name}.old-*"))
    if leftovers:
        leftovers[-1].rename(target)


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete hidden `.NAME.tmp-PID` directories that no running process is writing; return their names."""
    removed = []
    if directory.is_dir():
        for path in directory.glob(".*.tmp-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _process_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return sorted(removed)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, left by an earlier run in this process (tests): nothing writes it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unique_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Each parameter once: tied weights (embedding and head) are one tensor, counted and stored once."""
    return list({id(p): p for p in model.parameters()}.values())


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Write a file under a hidden temporary name and rename it to `target` only when complete: an interrupt or
    error leaves the previous `target` (or none) and no partial file."""
    tmp = temporary_sibling(target, "tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


_stage: tuple[str, str | Callable[[], str]] = ("starting", "nothing was written")


@contextmanager
def stage(doing: str, on_disk: str | Callable[[], str]) -> Iterator[None]:
    """Name what the command is doing and what is on disk if it is interrupted now (a text, or a function that
    looks once the interrupt has unwound): the command line's one line for a signal says both."""
    global _stage
    previous, _stage = _stage, (doing, on_disk)
    try:
        yield
    except BaseException as err:
        if not hasattr(err, "stage"):  # the innermost stage names where it happened
            err.stage = (doing, on_disk)
        raise
    finally:
        _stage = previous


def stage_of(err: BaseException) -> tuple[str, str]:
    """(what was being done, what is on disk) where `err` interrupted the command."""
    doing, on_disk = getattr(err, "stage", _stage)
    return doing, on_disk() if callable(on_disk) else on_disk
