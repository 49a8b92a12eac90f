"""Attention for packed rows (core/data/batching.py: `pack`): causal SDPA on each sequence alone.

A packed row's sequence boundaries reach the attention function as `cu_seq_lens_q`. FlashAttention
models read them natively; SDPA and eager models get `packed_sdpa_attention`, which runs causal SDPA
per sequence, so no attention crosses a boundary and no score is spent on a masked-out pair. Calls
without boundaries (generation) go to the stock SDPA function unchanged.

`register()` adds the function to transformers' registries; `core.model.prepare` calls it when it
switches a model to packed attention. Importing this module changes nothing.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, cu_seq_lens_q: torch.Tensor | None = None, **kwargs):
    """Causal SDPA per packed sequence: `query` [1, heads, tokens, head_dim] -> [1, tokens, heads, head_dim]."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # split (not slices): its backward is one concatenation, not a zero-filled copy per sequence
    lengths = cu_seq_lens_q.diff().tolist()
    gqa = query.shape[1] != key.shape[1]
    parts = [torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa).transpose(1, 2)
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(parts, dim=1), None


def register() -> None:
    """Make `ATTENTION` a name transformers accepts; generation under it gets the masks SDPA would get."""
    AttentionInterface.register(ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def cannot_pack(model, max_length: int) -> str | None:
    """None if `model` can train on packed rows; otherwise the reason it cannot."""
    if not getattr(model, "_supports_attention_backend", False):
        return f"{type(model).__name__} does not route attention through transformers' attention functions"
    if not getattr(model, "_supports_sdpa", False):
        return f"{type(model).__name__} does not support SDPA attention"
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < max_length:
        return f"its sliding attention window ({window}) is shorter than --max_length {max_length}"
    if getattr(config, "attn_logit_softcapping", None):
        return "it soft-caps attention scores, which SDPA cannot do"
    return None
