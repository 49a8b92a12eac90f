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
from core.train.objectives import Batch
from core.train.run import Run


@dataclass
class StepResult:
    """An optimizer step's figures, kept on the device until read (`read_results`): reading waits for the device.

    `on_device` holds [loss sum, *metric sums] over all ranks; `checks` [grad norm, 1.0 if the update was
    skipped], set by `train_step`. The host knows the counts already.
    """
    count: int           # the step's divisor (trained tokens, pairs, ...), over all ranks
    real_tokens: int
    on_device: torch.Tensor
    checks: torch.Tensor | None = None
    _host: list[float] | None = field(default=None, repr=False)

    def values(self) -> torch.Tensor:
        checks = self.checks if self.checks is not None else torch.tensor([math.nan, 0.0],
                                                                           device=self.on_device.device)
        dtype = torch.promote_types(self.on_device.dtype, checks.dtype)
        return torch.cat([self.on_device.to(dtype), checks.to(dtype)])

    def _read(self) -> list[float]:
        if self._host is None:
            read_results([self])
        return self._host

    @property
    def loss(self) -> float:
        """The mean loss over the step's count, NaN if the update was skipped."""
        loss_sum, *_, skipped = self._read()
        return math.nan if skipped else loss_sum / max(self.count, 1)

    @property
    def grad_norm(self) -> float:
        return self._read()[-2]

    @property
    def sums(self) -> list[float]:
        """The objective's metric sums, over all ranks."""
        return self._read()[1:-2]


def read_results(results: list[StepResult]) -> None:
    """Bring the figures of several steps to the host in one transfer (the one wait for the device)."""
    unread = [r for r in results if r._host is None]
    if not unread:
        return
    values = [r.values() for r in unread]
    dtype = values[0].dtype
    for v in values[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    for result, host in zip(unread, torch.stack([v.to(dtype) for v in values]).tolist()):
        result._host = host


def train_batches(run: Run, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches of units (each rank trains its share): shuffled, length-grouped only when padded."""
    return epoch_batches(run.data.train_idx, run.data.lengths, run.batching, run.config.seed, epoch)


def step_groups(run: Run, batches: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The epoch's remaining optimizer steps, each its `--grad_accum_steps` global batches, from where the run is."""
    state, accum = run.state, run.config.grad_accum_steps
    starts = range(state.batch_in_epoch, len(batches), accum)
    return [batches[i:i + accum] for i in starts][:max(run.optim.total_steps - state.step, 0)]


def rank_share(run: Run, batch: np.ndarray) -> tuple[np.ndarray, bool]:
    """This rank's part of a global batch, or (where that is empty) a stand-in whose loss counts zero: every
    rank must run each forward and backward, since DDP and FSDP communicate inside them."""
    part = distributed.own_part(run.dist, run.batching.split(batch, run.data.lengths))
    return (part, True) if len(part) else (batch[:1], False)


def step_batches(run: Run, micro_batches: list[np.ndarray]) -> list[tuple[Batch, bool]]:
    """This rank's share of each micro-batch as model inputs on the device, with whether it counts: host work with no
    communication, so that it can be done ahead on another thread (core/train/prefetch.py)."""
    return [(run.objective.batch(run, part), counts) for part, counts in (rank_share(run, b) for b in micro_batches)]


def accumulate_gradients(run: Run, micro_batches: list[np.ndarray],
                         batches: list[tuple[Batch, bool]] | None = None) -> StepResult:
    """Backward over the micro-batches, each scaled by 1 / (the count of all of them, on all ranks).

    The gradient equals that of one batch holding all the micro-batches, whatever their sizes and
    however many processes share them. `batches`: their `step_batches`, when built ahead.
    """
    dist, device, objective = run.dist, run.prepared.device, run.objective
    batches = step_batches(run, micro_batches) if batches is None else batches
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
    if sums is None:
        sums = torch.zeros(len(objective.metric_names), device=device)
    dtype = torch.promote_types(total.dtype, sums.dtype)
    summed = distributed.sum_tensor(dist, torch.cat([total.reshape(1).to(dtype), sums.detach().to(dtype)]))
    return StepResult(int(n_count), int(n_real), summed)


def skips_on_device(run: Run) -> bool:
    """Fused AdamW skips its update (and its step count) where its `found_inf` tensor is 1, on the device; the
    foreach optimizer (FSDP) and the fp16 gradient scaler, whose own `found_inf` that is, decide on the host."""
    optimizer = run.optim.optimizer
    return all(group.get("fused") for group in optimizer.param_groups) and not run.optim.scaler.is_enabled()


def train_step(run: Run, micro_batches: list[np.ndarray], batches: list[tuple[Batch, bool]] | None = None
               ) -> StepResult:
    """One optimizer step; an update whose loss or gradient norm is not finite is skipped (`StepResult.loss` NaN).

    On the fused-AdamW path nothing here waits for the device: the figures stay there until read. `batches`: the
    micro-batches' `step_batches`, when built ahead."""
    optim = run.optim
    result = accumulate_gradients(run, micro_batches, batches)
    optim.scaler.unscale_(optim.optimizer)
    params = [p for p in run.prepared.model.parameters() if p.grad is not None]
    grad_norm = distributed.full_tensor(
        torch.nn.utils.clip_grad_norm_(params, run.config.max_grad_norm or float("inf"))).detach()
    loss_sum = result.on_device[0]
    if skips_on_device(run):
        bad = (~(torch.isfinite(loss_sum) & torch.isfinite(grad_norm))).to(torch.float32)
        optim.optimizer.found_inf, optim.optimizer.grad_scale = bad, None
        try:
            optim.optimizer.step()
        finally:
            optim.optimizer.found_inf = None
    else:
        # With fp16 the scaler itself skips steps with overflowing gradients; only a bad loss is ours to count.
        finite = math.isfinite(float(loss_sum)) and (math.isfinite(float(grad_norm)) or optim.scaler.is_enabled())
        if finite:
            optim.scaler.step(optim.optimizer)
            optim.scaler.update()
        bad = torch.tensor(0.0 if finite else 1.0, device=grad_norm.device)
    result.checks = torch.stack([grad_norm.to(torch.float32), bad])  # exact: gradients are never float64
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
