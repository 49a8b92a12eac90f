"""Batch order and padded batches.

An epoch's batch order is a pure function of (lengths, batch size, seed, epoch, by_length), so a
resumed run rebuilds it and starts at the next unseen batch without iterating over the ones before.
Padded batches (for models that cannot take packed rows, see `core.packing`) are cut from shuffled
groups of similar length so that they carry almost no padding.
"""

from __future__ import annotations

import numpy as np
import torch

from core.loss import IGNORE
from core.tokenized import TokenizedData

GROUP_BATCHES = 64  # batches per length-sorted group: larger groups pad less, smaller ones shuffle more


def epoch_batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  by_length: bool = True) -> list[np.ndarray]:
    """Shuffle; with `by_length`, sort each group of GROUP_BATCHES batches by length, cut, and shuffle the batches.

    Packed rows carry no padding whatever their mix of lengths, so they take `by_length=False`: plain
    shuffled batches, whose sizes in tokens (and so peak memory) vary less.
    """
    rng = np.random.default_rng([seed, epoch])
    order = indices[rng.permutation(len(indices))]
    if not by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    group = batch_size * GROUP_BATCHES
    batches = []
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Validation batches sorted by length: deterministic and padding-free as far as possible."""
    ordered = indices[np.argsort(-lengths[indices], kind="stable")]
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def collate(data: TokenizedData, batch: np.ndarray, pad_id: int) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels): right-padded input ids, and labels that are IGNORE where no loss is taken.

    Right padding needs no attention mask: attention is causal, so a real token never sees the pads
    after it, and pads carry no loss.
    """
    width = int(data.lengths[batch].max())
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(batch):
        ids, trained = data.sequence(int(i))
        ids_t = torch.from_numpy(np.array(ids, dtype=np.int64))
        input_ids[row, :len(ids)] = ids_t
        labels[row, :len(ids)] = torch.where(torch.from_numpy(np.array(trained)), ids_t, IGNORE)
    return {"input_ids": input_ids}, labels
