"""What a run reports as it goes: metrics.jsonl, the progress bar and the log lines.

`metrics.jsonl` holds one JSON object per logged step ("train"), evaluation ("eval") and skipped
step ("skipped"); every object has the step, so a resumed run can drop what came after its checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm


class RunLog:
    """The metrics file, the progress bar and the tokens-per-second window between log lines."""

    def __init__(self, metrics_path: Path, total_steps: int, first_step: int, log=tqdm.write, enabled: bool = True,
                 trackers: list | None = None):
        """`enabled` False (ranks other than 0): nothing is written or shown. `trackers` get every entry too."""
        self.log = log if enabled else lambda *_: None
        self._trackers = trackers or []
        self._file = metrics_path.open("a") if enabled else None
        self._bar = tqdm(total=total_steps, initial=first_step, desc="Training", unit="step", dynamic_ncols=True,
                         disable=not enabled or None)
        self._window_start = self._last_step = time.perf_counter()
        self._postfix: dict[str, str] = {}

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
        if self._file is not None:
            self._file.close()
        for tracker in self._trackers:
            tracker.close()

    def record(self, entry: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
        for tracker in self._trackers:
            tracker.log(entry)

    def step_done(self, lr: float, real_tokens: int) -> None:
        """The bar after each step; the loss it shows is the last logged one (reading it each step would wait
        for the device)."""
        now = time.perf_counter()
        self._bar.update(1)
        self._postfix.update(lr=f"{lr:.2e}", tok_s=f"{real_tokens / max(now - self._last_step, 1e-9):.0f}")
        self._bar.set_postfix(self._postfix)
        self._last_step = now

    def train_line(self, step: int, total: int, epoch: int, loss: float, lr: float, grad_norm: float,
                   seen_tokens: int, metrics: dict | None = None) -> None:
        """A log line and a metrics entry for the window since the last one; `metrics`: the objective's own."""
        now = time.perf_counter()
        elapsed, self._window_start = now - self._window_start, now
        entry = {"type": "train", "step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                 "tokens_per_sec": seen_tokens / elapsed if elapsed > 0 else None, **(metrics or {})}
        self.record(entry)
        self._postfix["loss"] = f"{loss:.4f}"
        speed = f" | {entry['tokens_per_sec']:.0f} tok/s" if entry["tokens_per_sec"] else ""
        shown = list((metrics or {}).items())[:2]  # the objective's headline figures; the file has them all
        own = "".join(f" | {name.replace('_', ' ')} {value:.3f}" for name, value in shown)
        self.log(f"step {step}/{total} | epoch {epoch} | loss {loss:.4f}{own} | lr {lr:.2e} | grad norm "
                 f"{grad_norm:.3f}{speed}")
