"""The disk warning: said at the start, not at the third checkpoint, when the disk cannot hold what a run keeps."""

from __future__ import annotations

import shutil
from pathlib import Path


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
