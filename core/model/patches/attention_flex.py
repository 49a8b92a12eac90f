"""Packed rows through flex attention with a block-diagonal causal BlockMask made once per step.

The BlockMask records which 128x128 tiles hold any visible pair, so tiles across sequences are skipped.
On CUDA the kernel is compiled (`torch.compile(flex_attention)`); elsewhere flex attention runs its
unfused reference forward, and it has no backward off CUDA (`packed_attention.choose` refuses that).
"""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from core.model.patches.attention_backend import Backend, sequence_ids


def block_mask(inputs: dict) -> BlockMask:
    ids = sequence_ids(inputs)

    def same_sequence_causal(batch, head, q, k):
        return (ids[q] == ids[k]) & (q >= k)
    length = ids.shape[0]
    return create_block_mask(same_sequence_causal, None, None, length, length, device=ids.device)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=True)


def flex_packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, **kwargs):
    """[1, heads, tokens, head_dim] -> [1, tokens, heads, head_dim]; stock SDPA without a BlockMask (generation)."""
    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kernel = _compiled_flex() if query.device.type == "cuda" else flex_attention
    out = kernel(query, key, value, block_mask=attention_mask, scale=scaling,
                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2), None


FLEX = Backend("flex", flex_packed_attention, block_mask, kernel="flex attention with a block-diagonal BlockMask")
