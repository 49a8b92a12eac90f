"""Batches: the epoch's order, and token sequences turned into model inputs with labels.

An epoch's batch order is a pure function of (lengths, batch size, seed, epoch, grouping), so a
resumed run rebuilds it and starts at the next unseen batch without iterating over the ones before.
Two layouts:
  packed  a micro-batch's sequences laid end to end in one row, no padding; position ids restart at
          0 for every sequence and the boundaries travel as `cu_seq_lens_q/k` and `max_length_q/k`,
          the keywords transformers' variable-length attention reads, and the lengths themselves as host
          integers (`LENGTHS`; see core/model/patches/packed_attention.py)
  padded  right-padded rows, cut from shuffled groups of similar length, for models that cannot
          take packed rows
Labels are IGNORE wherever no loss is taken. Both layouts also carry, made here on the host, the flat
indices of the positions whose next token is trained and those tokens (`LOSS_ROWS`, `LOSS_TARGETS`), so
that the selective head never has to find them on the device (a `nonzero` there waits for the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.data.tokenized import TokenizedData
from core.labels import IGNORE

LENGTHS = "sequence_lengths"    # packed rows: each sequence's length, a tuple of host integers
LOSS_ROWS = "loss_rows"         # flat indices into the [rows * width] positions that predict a trained token
LOSS_TARGETS = "loss_targets"   # the token each of them predicts


@dataclass(frozen=True)
class BatchSize:
    """What one process takes per micro-batch: `sequences`, or, with `tokens`, as many sequences as fit that
    many tokens (a padded batch costs its rows times its longest sequence). A global batch is one such
    micro-batch per process, laid end to end."""
    sequences: int
    tokens: int = 0
    processes: int = 1
    padded: bool = False
    group_batches: int = 0  # padded rows: global batches per length-sorted group (0: plain shuffled batches)

    def cut(self, order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """`order` cut, in order, into global batches."""
        if not self.tokens:
            step = self.sequences * self.processes
            return [order[i:i + step] for i in range(0, len(order), step)]
        parts = self.fill(order, lengths)
        return [np.concatenate(parts[i:i + self.processes]) for i in range(0, len(parts), self.processes)]

    def split(self, batch: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """A global batch's per-process parts (one per process; the last ones may be empty). Filling a global
        batch again gives back exactly the parts it was made of, since filling is greedy from the start."""
        if not self.tokens:
            return np.array_split(batch, self.processes)
        parts = self.fill(batch, lengths)
        return parts + [batch[:0]] * (self.processes - len(parts))

    def fill(self, order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """`order` cut greedily into micro-batches of at most `tokens` tokens; no sequence is split."""
        cuts, used, rows, longest = [0], 0, 0, 0
        for position, n in enumerate(lengths[order].tolist()):
            longest_then = max(longest, n)
            cost = (rows + 1) * longest_then if self.padded else used + n
            if rows and cost > self.tokens:
                cuts.append(position)
                used, rows, longest_then = 0, 0, n
            used, rows, longest = used + n, rows + 1, longest_then
        cuts.append(len(order))
        return [order[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def epoch_batches(indices: np.ndarray, lengths: np.ndarray, size: BatchSize, seed: int,
                  epoch: int) -> list[np.ndarray]:
    """Shuffle; with `size.group_batches`, sort each group of that many global batches' sequences by length,
    cut, and shuffle the batches.

    Packed rows carry no padding whatever their mix of lengths, so they are not grouped: plain shuffled
    batches, whose sizes in tokens (and so peak memory) vary less.
    """
    rng = np.random.default_rng([seed, epoch])
    order = indices[rng.permutation(len(indices))]
    if not size.group_batches:
        return size.cut(order, lengths)
    group = size.sequences * size.processes * size.group_batches
    batches = []
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        batches += size.cut(chunk[np.argsort(-lengths[chunk], kind="stable")], lengths)
    return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(indices: np.ndarray, lengths: np.ndarray, size: BatchSize) -> list[np.ndarray]:
    """Validation batches sorted by length: deterministic and padding-free as far as possible."""
    return size.cut(indices[np.argsort(-lengths[indices], kind="stable")], lengths)


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
    return {"input_ids": input_ids, **loss_positions(labels.numpy())}, labels


def pack(data: TokenizedData, batch: np.ndarray) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels) for `batch` laid end to end in one row.

    Each sequence's first label is IGNORE too, so the last token of one sequence is never trained to
    predict the first of the next.
    """
    ids_parts, label_parts, lengths = [], [], []
    for i in batch:
        ids, trained = data.sequence(int(i))
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.where(np.asarray(trained, dtype=bool), ids, IGNORE)
        labels[0] = IGNORE
        ids_parts.append(ids)
        label_parts.append(labels)
        lengths.append(len(ids))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    positions = np.concatenate([np.arange(n) for n in lengths])
    cu = torch.from_numpy(bounds.astype(np.int32))
    inputs = {"input_ids": torch.from_numpy(np.concatenate(ids_parts))[None],
              "position_ids": torch.from_numpy(positions)[None],
              "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths),
              LENGTHS: tuple(lengths)}
    labels = np.concatenate(label_parts)[None]
    return {**inputs, **loss_positions(labels)}, torch.from_numpy(labels)


def loss_positions(labels: np.ndarray) -> dict:
    """`LOSS_ROWS` and `LOSS_TARGETS` of a [rows, width] label array, in row-major order."""
    shifted = labels[:, 1:]
    row, position = np.nonzero(shifted != IGNORE)
    return {LOSS_ROWS: torch.from_numpy(row * labels.shape[1] + position),
            LOSS_TARGETS: torch.from_numpy(np.ascontiguousarray(shifted[row, position]))}
