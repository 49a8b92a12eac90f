"""Packed rows through a variable-length attention kernel: no mask at all, one call per layer.

FlashAttention-2's `flash_attn_varlen_func` when the `flash_attn` package imports, else torch's
`torch.nn.attention.varlen.varlen_attn` (torch 2.10+). Both read the boundaries (`cu_seq_lens_q`, which
reaches the layers in the `attention_mask` slot as [1, 1, 1, n + 1]) and the longest sequence
(`max_length_q`, a host integer) and compute only the scores within each sequence. CUDA only.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from core.model.patches.attention_backend import Backend, boundaries


def torch_varlen(query, key, value, cu, max_length: int, scaling: float | None):
    from torch.nn.attention.varlen import varlen_attn
    return varlen_attn(query, key, value, cu, cu, max_length, max_length, scale=scaling, window_size=(-1, 0),
                       enable_gqa=query.shape[1] != key.shape[1])


def flash_attn_varlen(query, key, value, cu, max_length: int, scaling: float | None):
    from flash_attn import flash_attn_varlen_func
    return flash_attn_varlen_func(query, key, value, cu, cu, max_length, max_length, softmax_scale=scaling,
                                  causal=True)


def make_attention(kernel):
    def varlen_packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                                scaling: float | None = None, max_length_q: int | None = None, **kwargs):
        """[1, heads, tokens, head_dim] -> [1, tokens, heads, head_dim]; stock SDPA without boundaries (generation)."""
        if attention_mask is None or attention_mask.dtype != torch.int32:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [tokens, heads, head_dim]
        return kernel(q, k, v, attention_mask.view(-1), max_length_q, scaling)[None], None
    return varlen_packed_attention


def varlen_backend(prefer_flash_attn: bool | None = None) -> Backend:
    """FlashAttention-2 when it imports (or when asked), torch's varlen kernel otherwise."""
    flash = importlib.util.find_spec("flash_attn") is not None if prefer_flash_attn is None else prefer_flash_attn
    kernel, what = (flash_attn_varlen, "FlashAttention-2 varlen") if flash else (torch_varlen, "torch varlen_attn")
    return Backend("varlen", make_attention(kernel), boundaries, ("max_length_q",), kernel=what)
