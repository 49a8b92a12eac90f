"""Log-probabilities of the trained tokens, one per token, with gradients: what preference objectives sum per
reply (core/train/objectives/). Like the selective head, the head runs on trained positions only; each
chunk's logits are recomputed in the backward pass instead of kept, so no `[tokens, vocabulary]` tensor
outlives its chunk.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from core.model.patches.last_layer import ROWS, is_trimmed
from core.model.patches.selective_head import trained_positions


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _chunk_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = _at_least_fp32(hidden @ weight.to(hidden.dtype).T)
    return logits.gather(1, targets[:, None])[:, 0] - logits.logsumexp(dim=-1)


def trained_token_log_probs(model, inputs: dict, labels: torch.Tensor, selective: bool,
                            chunk_size: int = 2048) -> torch.Tensor:
    """log p(token) for every trained token of the batch, in row-major order (sequence after sequence)."""
    index, targets = trained_positions(labels)
    if not selective:  # the model's own head on every position (soft-capped or scaled logits, biased heads)
        logits = _at_least_fp32(model(**inputs, use_cache=False).logits)
        rows = logits.reshape(-1, logits.shape[-1]).index_select(0, index)
        return rows.gather(1, targets[:, None])[:, 0] - rows.logsumexp(dim=-1)
    body = model.get_decoder()
    if is_trimmed(model):  # the last layer returns the trained rows only
        selected = body(**inputs, use_cache=False, **{ROWS: index}).last_hidden_state[0]
    else:
        hidden = body(**inputs, use_cache=False).last_hidden_state
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    weight = model.get_output_embeddings().weight
    with torch.autocast(device_type=selected.device.type, enabled=False):
        parts = [checkpoint(_chunk_log_probs, selected[s:s + chunk_size], weight, targets[s:s + chunk_size],
                            use_reentrant=False) if torch.is_grad_enabled() else
                 _chunk_log_probs(selected[s:s + chunk_size], weight, targets[s:s + chunk_size])
                 for s in range(0, selected.shape[0], chunk_size)]
    return torch.cat(parts) if parts else selected.new_zeros(0, dtype=torch.float32)
