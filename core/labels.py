"""The label that marks a token as not trained, shared by the data side (which writes it) and the losses."""

from __future__ import annotations

import math

import torch

IGNORE = -100  # transformers' ignore_index: positions with this label carry no loss


def trained_tokens(labels: torch.Tensor) -> int:
    """How many tokens of a batch carry loss (each label predicts from the position before it)."""
    return int((labels[:, 1:] != IGNORE).sum())


def perplexity(mean_loss: float) -> float:
    """exp of a mean token loss, capped so that a diverged loss reports a large number, not an overflow."""
    return math.exp(min(mean_loss, 50.0))
