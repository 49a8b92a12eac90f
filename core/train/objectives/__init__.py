"""The objective seam: what the loop asks of any training objective (SFT, DPO, KTO, GRPO), and nothing else.

The loop (core/train/step.py, core/trainer.py) never knows which objective runs. It cuts batches from
*units* (an SFT sequence, a DPO pair of sequences, a KTO completion) by their lengths, asks the
objective to turn a micro-batch of units into model inputs (`Objective.batch`), and to compute the
micro-batch's loss *sum* and its metric sums (`Objective.loss`). The divisor of an optimizer step is
the sum of the micro-batches' `Batch.count` over all micro-batches and all processes (trained tokens
for SFT, pairs for DPO, completions for KTO), counted on the host, so accumulation and several
processes give exactly the update of one large batch. `Objective.best` names the validation metric
that picks best_model/ and its direction.

`objective_for(config)` (table.py) builds the objective a run asked for (`--objective`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from core.train.samples import SamplePrompts


@dataclass(frozen=True)
class Best:
    """The validation metric that picks best_model/ (and drives early stopping)."""
    metric: str
    lower_is_better: bool = True

    def improved(self, value: float, best: float | None, threshold: float) -> bool:
        if best is None:
            return True
        return value < best - threshold if self.lower_is_better else value > best + threshold


@dataclass
class Batch:
    """One micro-batch of units as model inputs, with what the host knows about it."""
    inputs: dict
    labels: torch.Tensor
    count: int                      # this micro-batch's share of the step's divisor
    real_tokens: int                # non-padding tokens (the speed the log reports)
    extra: dict = field(default_factory=dict)  # objective-specific host data (sequence boundaries, references)


class Objective:
    """The interface; core/train/objectives/sft.py, dpo.py, kto.py and grpo.py implement it."""

    name: str
    unit: str  # what a unit is called in the log: sequences, pairs, replies
    best: Best
    metric_names: tuple[str, ...] = ()  # the metric sums `loss` returns beside the loss, in order

    def unit_lengths(self, data) -> np.ndarray:
        """Tokens per unit: what batches are cut by."""
        raise NotImplementedError

    def unit_records(self, data) -> np.ndarray:
        """The record each unit came from (the validation split is by record)."""
        raise NotImplementedError

    def batch(self, run, units: np.ndarray) -> Batch:
        """Model inputs for `units`, on the run's device: one packed row, or padded rows."""
        raise NotImplementedError

    def before_step(self, run, batches: list[Batch], counted: list[bool]) -> None:
        """Called with this rank's micro-batches of a step (or a validation batch) before their losses, with
        whether each counts (a stand-in does not, but must still run any forward the others run); every rank
        calls it, so it may compute statistics over the whole step (KTO's KL estimate)."""

    def loss(self, run, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss sum over the batch, a vector of metric sums or None); the caller divides by the step's count."""
        raise NotImplementedError

    def train_metrics(self, sums: list[float], count: float) -> dict:
        """The logged training metrics beside the loss, from metric sums over a window of `count`."""
        return {name: value / max(count, 1) for name, value in zip(self.metric_names, sums)}

    def eval_result(self, loss_sum: float, sums: list[float], count: float) -> dict:
        """The validation entry of metrics.jsonl."""
        raise NotImplementedError

    def describe_eval(self, result: dict) -> str:
        """The validation log line's figures."""
        raise NotImplementedError

    def check_data(self, config) -> None:
        """Refuse, before the model loads, data this objective cannot train on."""

    def load_data(self, config, tokenizer, data_hash: str, progress: bool = True):
        """The run's tokenised data (core/data/), from the cache when it holds this exact input."""
        raise NotImplementedError

    def check_loaded(self, config, data) -> None:
        """Refuse, once tokenised, data on which this objective would train to nothing."""

    def validation_prompts(self, config, data) -> SamplePrompts:
        """The held-out prompts whose replies samples.jsonl follows (core/train/samples.py)."""
        raise NotImplementedError

    def prepare(self, run, log) -> None:
        """Anything to do once the run is built and before training (reference log-probabilities)."""

