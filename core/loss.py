"""Causal-LM loss computed only where it is taken: the head runs on trained positions, in chunks.

The prompt's logits are thrown away by every SFT loss, and the full `[tokens, vocabulary]` logits
tensor (151,936 columns for Qwen2.5) is the largest activation of a small model. Here the hidden
states of trained positions are gathered first, and the head and cross-entropy run on chunks of them;
the gradient of each chunk is computed in the forward pass (as in fused linear-cross-entropy kernels),
so no chunk's logits outlive its iteration and nothing is recomputed.
"""

from __future__ import annotations

import torch

from core.last_layer import ROWS, is_trimmed

IGNORE = -100


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of `hidden @ weight.T` against `targets`, with gradients computed eagerly."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(hidden.dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = (h @ w.T).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not need_grad:
                continue
            grad_logits = torch.exp(logits.sub_(log_norm[:, None]))  # softmax, in place of the logits
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_size] = grad_logits @ w
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T.float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_output.to(grad_hidden.dtype),
                None if grad_weight is None else (grad_weight * grad_output).to(ctx.weight_dtype),
                None, None)


def trained_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices of the hidden states that predict a trained token, those tokens)."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE
    batch, pos = mask.nonzero(as_tuple=True)
    return batch * labels.shape[1] + pos, shifted[batch, pos]


def summed_loss(model, inputs: dict, labels: torch.Tensor, chunk_size: int = 2048, body=None) -> torch.Tensor:
    """Sum (not mean) of token cross-entropies over trained tokens; the caller divides by its token count.

    `inputs` are the model inputs of a padded or packed batch (`core.batching`, `core.packing`);
    `body` is the (optionally compiled) transformer without its head.
    """
    body = body if body is not None else model.get_decoder()
    index, targets = trained_positions(labels)
    if is_trimmed(model):  # the last layer returns the trained rows only
        selected = body(**inputs, **{ROWS: index}).last_hidden_state[0]
    else:
        hidden = body(**inputs).last_hidden_state
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
    head = model.get_output_embeddings()
    with torch.autocast(device_type=selected.device.type, enabled=False):
        return _ChunkedHeadCrossEntropy.apply(selected, head.weight, targets, chunk_size)


def supports_selective_head(model) -> bool:
    """The selective loss applies to plain `hidden @ W.T` heads; models with soft-capped or scaled logits do not qualify."""
    config = model.config
    head = model.get_output_embeddings()
    return (isinstance(head, torch.nn.Linear) and head.bias is None
            and not getattr(config, "final_logit_softcapping", None) and getattr(config, "logit_scale", None) in (None, 1.0)
            and model.get_decoder() is not None)


def summed_loss_full_logits(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Reference (and fallback) loss through the model's own head on every position."""
    logits = model(**inputs).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE, reduction="sum")
