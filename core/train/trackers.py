"""`--report_to`: the same metrics as metrics.jsonl, sent to the experiment tracker people already use.

TensorBoard writes event files to `OUTPUT_DIR/tensorboard`; Weights & Biases and Trackio log to their
own project ("roleplay-tuner"). Each needs its package; asking for one that is not installed stops
the run before anything loads, with the command that installs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from core.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_available(report_to: str) -> None:
    package = PACKAGES.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"--report_to {report_to} needs the {package} package: pip install {package}")


class Tracker:
    """One tracker: `log(entry)` takes a metrics.jsonl entry (type, step and numbers)."""

    def __init__(self, report_to: str, output_dir: Path, options: dict):
        self.kind = report_to
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(output_dir / "tensorboard"))
        elif report_to == "wandb":
            import wandb
            self._run = wandb.init(project="roleplay-tuner", name=output_dir.name, config=options)
        elif report_to == "trackio":
            import trackio
            self._run = trackio.init(project="roleplay-tuner", name=output_dir.name, config=options)

    def log(self, entry: dict) -> None:
        numbers = {f"{entry['type']}/{k}": v for k, v in entry.items()
                   if k not in ("type", "step") and isinstance(v, int | float) and not isinstance(v, bool)}
        if self.kind == "tensorboard":
            for name, value in numbers.items():
                self._writer.add_scalar(name, value, entry["step"])
        else:
            self._run.log(numbers, step=entry["step"])

    def close(self) -> None:
        if self.kind == "tensorboard":
            self._writer.close()
        else:
            self._run.finish()


def open_trackers(report_to: str, output_dir: Path, options: dict) -> list[Tracker]:
    return [] if report_to == "none" else [Tracker(report_to, output_dir, options)]
