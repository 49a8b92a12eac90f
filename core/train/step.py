"""One optimizer step and one validation pass over a `Run`: the part a GPU path or a new parallelism reshapes.

One optimizer step = `grad_accum_steps` global micro-batches, each shared by the ranks; the
objective's loss sums (core/train/objectives/) are divided by the step's count (trained tokens for
SFT, pairs for DPO, ...) over all of them on all ranks, counted on the host, so accumulation and data
parallelism give the same update as one larger batch. Every rank runs every forward and backward (a
rank whose share is empty runs a stand-in whose loss counts zero), since DDP and FSDP communicate
inside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from core.data.batching import epoch_batches, eval_batches
from core.train import distributed
from core.train.run_setup import Run


@dataclass
class StepResult:
    loss: float          # mean loss over the step's count, NaN if the update was skipped
    grad_norm: float
    count: int           # the step's divisor (trained tokens, pairs, ...), over all ranks
    real_tokens: int
    sums: list[float] = field(default_factory=list)  # the objective's metric sums, over all ranks


def train_batches(run: Run, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches of units (each rank trains its share): shuffled, length-grouped only when padded."""
    return epoch_batches(run.data.train_idx, run.data.lengths, run.batching, run.config.seed, epoch)


def rank_share(run: Run, batch: np.ndarray) -> tuple[np.ndarray, bool]:
    """This rank's part of a global batch, or (where that is empty) a stand-in whose loss counts zero: every
    rank must run each forward and backward, since DDP and FSDP communicate inside them."""
    part = distributed.own_part(run.dist, run.batching.split(batch, run.data.lengths))
    return (part, True) if len(part) else (batch[:1], False)


def accumulate_gradients(run: Run, micro_batches: list[np.ndarray]) -> StepResult:
    """Backward over the micro-batches, each scaled by 1 / (the count of all of them, on all ranks).

    The gradient equals that of one batch holding all the micro-batches, whatever their sizes and
    however many processes share them.
    """
    dist, device, objective = run.dist, run.prepared.device, run.objective
    shares = [rank_share(run, b) for b in micro_batches]
    batches = [(objective.batch(run, part), counts) for part, counts in shares]
    n_count, n_real = distributed.sum_across(dist, [sum(b.count for b, counts in batches if counts),
                                                    sum(b.real_tokens for b, counts in batches if counts)], device)
    objective.before_step(run, [b for b, _ in batches], [counts for _, counts in batches])
    total = torch.zeros((), device=device)
    sums = None
    for index, (batch, counts) in enumerate(batches):
        run.on_event("micro_batch", run, index=index)
        with distributed.gradient_sync(run.prepared.loss_module, dist, sync=index == len(batches) - 1):
            loss, metric_sums = objective.loss(run, batch)
            loss = loss if counts else loss * 0.0
            # DDP and FSDP average gradients over ranks: the world size turns that average into the sum.
            run.optim.scaler.scale(loss * dist.world_size / max(n_count, 1)).backward()
        total += loss.detach()
        if metric_sums is not None and counts:
            sums = metric_sums if sums is None else sums + metric_sums
    local = [] if not objective.metric_names else (
        sums.tolist() if sums is not None else [0.0] * len(objective.metric_names))
    loss_sum, *metric_totals = distributed.sum_across(dist, [float(total), *local], device)
    return StepResult(loss_sum / max(n_count, 1), math.nan, int(n_count), int(n_real), metric_totals)


def train_step(run: Run, micro_batches: list[np.ndarray]) -> StepResult:
    """One optimizer step: the mean loss (NaN if the update was skipped), grad norm, counts and metric sums."""
    optim = run.optim
    result = accumulate_gradients(run, micro_batches)
    optim.scaler.unscale_(optim.optimizer)
    params = [p for p in run.prepared.model.parameters() if p.grad is not None]
    result.grad_norm = distributed.scalar(
        torch.nn.utils.clip_grad_norm_(params, run.config.max_grad_norm or float("inf")))
    # With fp16 the scaler itself skips steps with overflowing gradients; only a bad loss is ours to count.
    finite = math.isfinite(result.loss) and (math.isfinite(result.grad_norm) or optim.scaler.is_enabled())
    if finite:
        optim.scaler.step(optim.optimizer)
        optim.scaler.update()
    else:
        result.loss = float("nan")
    optim.optimizer.zero_grad(set_to_none=True)
    optim.scheduler.step()
    return result


@torch.no_grad()
def validate(run: Run) -> dict:
    """The objective's validation metrics over the whole held-out split (all ranks' shares)."""
    objective = run.objective
    run.prepared.model.eval()
    total, count = 0.0, 0
    sums = [0.0] * len(objective.metric_names)
    for global_batch in eval_batches(run.data.eval_idx, run.data.lengths, run.batching):
        part, counts = rank_share(run, global_batch)
        batch = objective.batch(run, part)
        objective.before_step(run, [batch], [counts])
        loss, metric_sums = objective.loss(run, batch)
        loss = loss.item()
        if counts:
            total += loss
            count += batch.count
            if metric_sums is not None:
                sums = [a + b for a, b in zip(sums, metric_sums.tolist())]
    total, count, *sums = distributed.sum_across(run.dist, [total, count, *sums], run.prepared.device)
    run.prepared.model.train()
    return objective.eval_result(total, sums, count)
