"""Batches with almost no padding: shuffled groups of similar length, reproducible from the seed.

An epoch's batch order is a pure function of (lengths, batch size, seed, epoch), so a resumed run
rebuilds it and starts at the next unseen batch without iterating over the ones before.
"""

from __future__ import annotations

import numpy as np
import torch

from core.loss import IGNORE
from core.tokenized import TokenizedData

GROUP_BATCHES = 64  # batches per length-sorted group: larger groups pad less, smaller ones shuffle more


def epoch_batches(indices: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int, epoch: int
                  ) -> list[np.ndarray]:
    """Shuffle, sort each group of GROUP_BATCHES batches by length, cut into batches, shuffle the batches."""
    rng = np.random.default_rng([seed, epoch])
    order = indices[rng.permutation(len(indices))]
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


def collate(data: TokenizedData, batch: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (IGNORE where no loss is taken, including the padding)."""
    width = int(data.lengths[batch].max())
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(batch):
        ids, trained = data.sequence(int(i))
        ids_t = torch.from_numpy(np.array(ids, dtype=np.int64))
        input_ids[row, :len(ids)] = ids_t
        labels[row, :len(ids)] = torch.where(torch.from_numpy(np.array(trained)), ids_t, IGNORE)
    return input_ids, labels
