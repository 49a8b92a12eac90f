"""Causal-LM loss computed only where it is taken: the head runs on trained positions, in chunks.

The prompt's logits are thrown away by every SFT loss, and the full `[tokens, vocabulary]` logits
tensor (151,936 columns for Qwen2.5) is the largest activation of a small model. Here the hidden
states of trained positions are gathered first, and the head and cross-entropy run on chunks of them;
the gradient of each chunk is computed in the forward pass (as in fused linear-cross-entropy kernels),
so no chunk's logits outlive its iteration and nothing is recomputed.
"""

from __future__ import annotations

import torch

from core.labels import IGNORE
from core.model.patches.last_layer import ROWS, is_trimmed


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of `hidden @ weight.T` against `targets`, with gradients computed eagerly.

    Each chunk's softmax is taken in place of its logits, and the gradients are scaled in place in the
    backward pass, so the only `[rows, vocabulary]` buffer is one chunk's logits and the only
    `weight`-sized one is the gradient itself (545 MB each for Qwen2.5-0.5B's head, at the step's peak).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(hidden.dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]
            t = targets[start:start + chunk_size]
            logits = (h @ w.T).float()
            target_logits = logits.gather(1, t[:, None])
            peak = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # unnormalised softmax, in place of the logits
            norm = probs.sum(dim=-1, keepdim=True)
            total += (norm.log() + peak - target_logits).sum()
            if not need_grad:
                continue
            grad_logits = probs.div_(norm)
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_size] = grad_logits @ w
            if ctx.needs_input_grad[1]:
                factors = (grad_logits.T.float(), h.float())
                grad_weight = torch.mm(*factors) if grad_weight is None else grad_weight.addmm_(*factors)
        ctx.grads = (grad_hidden, grad_weight)  # not inputs or outputs: kept on ctx, released after use
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("The chunked head loss was back-propagated twice; its gradients are computed once, "
                               "in the forward pass, and released by the first backward (no retain_graph=True)")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        return (None if grad_hidden is None else grad_hidden.mul_(grad_output.to(grad_hidden.dtype)),
                None if grad_weight is None else grad_weight.mul_(grad_output).to(ctx.weight_dtype),
                None, None)


def trained_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices of the hidden states that predict a trained token, those tokens)."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE
    batch, pos = mask.nonzero(as_tuple=True)
    return batch * labels.shape[1] + pos, shifted[batch, pos]


def summed_loss(model, inputs: dict, labels: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """Sum (not mean) of token cross-entropies over trained tokens; the caller divides by its token count.

    `inputs` are the model inputs of a padded or packed batch (`core.data.batching`).
    """
    index, targets = trained_positions(labels)
    selected = trained_hidden(model, inputs, index)
    head = model.get_output_embeddings()
    with torch.autocast(device_type=selected.device.type, enabled=False):
        return _ChunkedHeadCrossEntropy.apply(selected, head.weight, targets, chunk_size)


def trained_hidden(model, inputs: dict, index: torch.Tensor) -> torch.Tensor:
    """The final hidden states at the flat positions `index` (those that predict a trained token)."""
    body = model.get_decoder()
    if is_trimmed(model):  # the last layer returns the trained rows only
        return body(**inputs, use_cache=False, **{ROWS: index}).last_hidden_state[0]
    hidden = body(**inputs, use_cache=False).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)


@torch.no_grad()
def token_losses(model, inputs: dict, labels: torch.Tensor, chunk_size: int = 2048
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions, cross-entropy of each trained token): `summed_loss`'s terms one by one (per-record losses)."""
    index, targets = trained_positions(labels)
    selected = trained_hidden(model, inputs, index)
    weight = model.get_output_embeddings().weight
    with torch.autocast(device_type=selected.device.type, enabled=False):
        losses = [torch.nn.functional.cross_entropy((selected[i:i + chunk_size] @ weight.to(selected.dtype).T).float(),
                                                    targets[i:i + chunk_size], reduction="none")
                  for i in range(0, len(targets), chunk_size)]
    return index, torch.cat(losses) if losses else torch.zeros(0)


def selective_head_refusal(model) -> str | None:
    """None where the selective loss applies (a plain `hidden @ W.T` head); otherwise why it does not."""
    config = model.config
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return "the output head is not a bias-free linear layer"
    if getattr(config, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    if getattr(config, "logit_scale", None) not in (None, 1.0):
        return "the model scales its logits"
    if model.get_decoder() is None:
        return "the model has no separate decoder body"
    return None


def summed_loss_full_logits(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Reference (and fallback) loss through the model's own head on every position."""
    logits = model(**inputs, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE, reduction="sum")
