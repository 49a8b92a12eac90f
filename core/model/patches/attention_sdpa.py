"""Packed rows through one SDPA call per layer, with a block-diagonal causal boolean mask made once per step.

Runs forward and backward on every device, and compiles to one graph whatever the sequence lengths
(the mask is computed from the boundaries on the device). It computes the scores of the whole row,
masked-out pairs included, so it spends more arithmetic than the per-sequence path as rows get longer.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from core.model.patches.attention_backend import Backend, sequence_ids


def block_diagonal_mask(inputs: dict) -> torch.Tensor:
    """[1, 1, T, T] boolean: position q sees position k when both are in one sequence and k <= q."""
    ids = sequence_ids(inputs)
    positions = torch.arange(ids.shape[0], device=ids.device)
    return ((ids[:, None] == ids[None, :]) & (positions[:, None] >= positions[None, :]))[None, None]


SDPA = Backend("sdpa", sdpa_attention_forward, block_diagonal_mask, kernel="SDPA with a block-diagonal mask")
