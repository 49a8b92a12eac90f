"""A run as the loop, the step, the objectives and the learning-rate search share it: built by
core/train/run_setup.py, trained by core/trainer.py. Below all of them, so that none imports another to name it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.config import TrainConfig
from core.data.batching import BatchSize
from core.data.tokenized import TokenizedData
from core.model.prepare import Prepared
from core.train.checkpoint import TrainState
from core.train.checkpoint_writer import BackgroundWriter
from core.train.distributed import Dist
from core.train.objectives import Objective
from core.train.plan import Plan
from core.train.samples import SamplePrompts


@dataclass
class Splits:
    sequences: TokenizedData
    lengths: np.ndarray        # tokens per unit (a sequence, or a pair: see core/train/objectives/)
    train_idx: np.ndarray      # units
    eval_idx: np.ndarray
    statistics: dict           # what `inspect` prints; also written to data_summary.json
    prompts: SamplePrompts     # validation prompts whose replies samples.jsonl follows (core/train/samples.py)


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    total_steps: int


@dataclass
class Run:
    config: TrainConfig  # the request, as given
    plan: Plan           # what the run does where the request left a choice (core/train/plan.py)
    prepared: Prepared
    tokenizer: object
    data: Splits
    optim: Optimization
    fingerprint: dict
    batching: BatchSize
    objective: Objective
    dist: Dist = field(default_factory=Dist)
    state: TrainState = field(default_factory=TrainState)
    resumed_from: Path | None = None
    unread: list = field(default_factory=list)  # steps whose figures are still on the device (core/trainer.py)
    writer: BackgroundWriter | None = None      # writes checkpoint-N/ while training goes on (set by `fit`)
    saving: Path | None = None                  # the checkpoint being written, whose "saved" event is due
    lr_search: dict | None = None               # --lr auto's curve and choice (core/train/lr_search.py)
    on_event: Callable[..., None] = lambda name, run, **details: None

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)
