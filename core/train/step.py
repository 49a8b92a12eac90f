"""One optimizer step and one validation pass over a `Run`: the part a GPU path or a new parallelism reshapes.

One optimizer step = `grad_accum_steps` global micro-batches, each shared by the ranks; their summed
token losses are divided by the number of trained tokens in all of them on all ranks, so accumulation
and data parallelism give the same update as one larger batch. Every rank runs every forward and
backward (a rank whose share is empty runs a stand-in whose loss counts zero), since DDP and FSDP
communicate inside them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from core.data.batching import collate, epoch_batches, eval_batches, pack
from core.labels import perplexity, trained_tokens
from core.train import distributed
from core.train.run_setup import Run


def train_batches(run: Run, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches (each rank trains its share): shuffled, length-grouped only when padded."""
    return epoch_batches(run.data.train_idx, run.data.sequences.lengths, run.batching, run.config.seed, epoch)


def make_batch(run: Run, batch: np.ndarray) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels) on the run's device: one packed row, or right-padded rows."""
    data, device = run.data.sequences, run.prepared.device
    inputs, labels = pack(data, batch) if run.prepared.packed else collate(data, batch, run.tokenizer.pad_token_id)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}, labels.to(device)


def rank_share(run: Run, batch: np.ndarray) -> tuple[np.ndarray, bool]:
    """This rank's part of a global batch, or (where that is empty) a stand-in whose loss counts zero: every
    rank must run each forward and backward, since DDP and FSDP communicate inside them."""
    part = distributed.own_part(run.dist, run.batching.split(batch, run.data.sequences.lengths))
    return (part, True) if len(part) else (batch[:1], False)


def accumulate_gradients(run: Run, micro_batches: list[np.ndarray]) -> tuple[float, int, int]:
    """Backward over the micro-batches, each scaled by 1 / (trained tokens of all of them, on all ranks).

    Returns (mean token loss, trained tokens, real tokens), over all ranks. The gradient equals that of
    one batch holding all the micro-batches, whatever their sizes and however many processes share them.
    """
    dist, device = run.dist, run.prepared.device
    shares = [rank_share(run, b) for b in micro_batches]
    batches = [(make_batch(run, part), counts) for part, counts in shares]
    n_trained, n_real = distributed.sum_across(dist, [
        sum(trained_tokens(labels) for (_, labels), counts in batches if counts),
        sum(int(run.data.sequences.lengths[part].sum()) for part, counts in shares if counts)], device)
    total = torch.zeros((), device=device)
    for index, ((inputs, labels), counts) in enumerate(batches):
        run.on_event("micro_batch", run, index=index)
        with distributed.gradient_sync(run.prepared.loss_module, dist, sync=index == len(batches) - 1):
            loss = run.prepared.loss_sum(inputs, labels)
            loss = loss if counts else loss * 0.0
            # DDP and FSDP average gradients over ranks: the world size turns that average into the sum.
            run.optim.scaler.scale(loss * dist.world_size / max(n_trained, 1)).backward()
        total += loss.detach()
    (loss_sum,) = distributed.sum_across(dist, [float(total)], device)
    return loss_sum / max(n_trained, 1), int(n_trained), int(n_real)


def train_step(run: Run, micro_batches: list[np.ndarray]) -> tuple[float, float, int, int]:
    """One optimizer step: (mean token loss or NaN if the update was skipped, grad norm, trained, real tokens)."""
    optim = run.optim
    mean_loss, n_trained, n_real = accumulate_gradients(run, micro_batches)
    optim.scaler.unscale_(optim.optimizer)
    params = [p for p in run.prepared.model.parameters() if p.grad is not None]
    grad_norm = distributed.scalar(torch.nn.utils.clip_grad_norm_(params, run.config.max_grad_norm or float("inf")))
    # With fp16 the scaler itself skips steps with overflowing gradients; only a bad loss is ours to count.
    finite = math.isfinite(mean_loss) and (math.isfinite(grad_norm) or optim.scaler.is_enabled())
    if finite:
        optim.scaler.step(optim.optimizer)
        optim.scaler.update()
    optim.optimizer.zero_grad(set_to_none=True)
    optim.scheduler.step()
    return (mean_loss if finite else float("nan")), grad_norm, n_trained, n_real


@torch.no_grad()
def validate(run: Run) -> dict:
    """Token-weighted validation loss and perplexity over the whole held-out split (all ranks' shares)."""
    run.prepared.model.eval()
    total, tokens = 0.0, 0
    for batch in eval_batches(run.data.eval_idx, run.data.sequences.lengths, run.batching):
        part, counts = rank_share(run, batch)
        inputs, labels = make_batch(run, part)
        loss = run.prepared.loss_sum(inputs, labels).item()
        if counts:
            total += loss
            tokens += trained_tokens(labels)
    total, tokens = distributed.sum_across(run.dist, [total, tokens], run.prepared.device)
    run.prepared.model.train()
    loss = total / max(tokens, 1)
    return {"eval_loss": loss, "eval_ppl": perplexity(loss), "eval_tokens": int(tokens)}
