"""Packed batches: a micro-batch's sequences laid end to end in one row, attention kept within each.

No position is padding, so the linear layers, nearly all of the work, run on real tokens only.
Position ids restart at 0 for every sequence, and the sequence boundaries travel with the forward
call as `cu_seq_lens_q/k` and `max_length_q/k`, the keywords transformers' FlashAttention path reads
for variable-length attention. Models on SDPA or eager attention get `packed_sdpa`, registered here,
which runs causal SDPA on each sequence alone: no attention crosses a boundary and no score is spent
on a masked-out pair. Calls without boundaries (generation) go to the stock SDPA function unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from core.loss import IGNORE
from core.tokenized import TokenizedData

ATTENTION = "packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, cu_seq_lens_q: torch.Tensor | None = None, **kwargs):
    """Causal SDPA per packed sequence; `query` is [1, heads, tokens, head_dim], the output [1, tokens, heads, head_dim]."""
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


AttentionInterface.register(ATTENTION, packed_sdpa_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # generation gets the masks SDPA would get


def can_pack(model, max_length: int) -> str | None:
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


def enable_packing(model) -> None:
    """Route the model's attention through `packed_sdpa`, unless it already runs FlashAttention (which packs natively)."""
    if "flash" not in (model.config._attn_implementation or ""):
        model.set_attn_implementation(ATTENTION)


def pack(data: TokenizedData, batch: np.ndarray) -> tuple[dict, torch.Tensor]:
    """(model inputs, labels) for `batch` laid end to end in one row; labels are IGNORE where no loss is taken.

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
              "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}
    return inputs, torch.from_numpy(np.concatenate(label_parts))[None]
