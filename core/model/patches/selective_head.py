"""Causal-LM loss computed only where it is taken: the head runs on trained positions, in chunks.

The prompt's logits are thrown away by every SFT loss, and the full `[tokens, vocabulary]` logits
tensor (151,936 columns for Qwen2.5) is the largest activation of a small model. Here the hidden
states of trained positions are gathered first, and the head and cross-entropy run on chunks of them;
the gradient of each chunk is computed in the forward pass (as in fused linear-cross-entropy kernels),
so no chunk's logits outlive its iteration and nothing is recomputed.

The trained positions and their targets come with the batch, made on the host (core/data/batching.py:
`LOSS_ROWS`, `LOSS_TARGETS`); only a caller without them has them found on the device. The head's
matmuls run in the autocast dtype (bf16 on a GPU: the head is a few percent of a step's matmul work, but
would be far slower in fp32); the softmax and the loss are accumulated in fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.data.batching import LOSS_ROWS, LOSS_TARGETS
from core.labels import IGNORE
from core.model.patches.last_layer import ROWS, is_trimmed


def _head_loss_and_gradients(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                             dtype: torch.dtype, grad_hidden_wanted: bool, grad_weight_wanted: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, gradient of hidden, fp32 gradient of weight), each gradient empty where not wanted.

    A custom op (`head_op`), so that a compiled step sees one operation whatever the number of rows:
    the Python loop over chunks would otherwise fix that number in the graph.
    """
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if grad_hidden_wanted else None
    grad_weight = None
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start:start + chunk_size].to(dtype)
        t = targets[start:start + chunk_size]
        logits = (h @ w.T).float()
        target_logits = logits.gather(1, t[:, None])
        peak = logits.amax(dim=-1, keepdim=True)
        probs = logits.sub_(peak).exp_()  # unnormalised softmax, in place of the logits
        norm = probs.sum(dim=-1, keepdim=True)
        total += (norm.log() + peak - target_logits).sum()
        if not (grad_hidden_wanted or grad_weight_wanted):
            continue
        grad_logits = probs.div_(norm)
        grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
        grad_logits = grad_logits.to(h.dtype)
        if grad_hidden is not None:
            grad_hidden[start:start + chunk_size] = grad_logits @ w
        if grad_weight_wanted:
            factors = (grad_logits.T, h)
            if grad_weight is None:
                grad_weight = torch.mm(*factors).float()
            elif factors[0].dtype == torch.float32:
                grad_weight.addmm_(*factors)
            else:  # a low-precision product, accumulated in fp32
                grad_weight.add_(torch.mm(*factors))
    if grad_weight is None:
        grad_weight = (torch.zeros_like(weight, dtype=torch.float32) if grad_weight_wanted
                       else weight.new_empty(0, dtype=torch.float32))
    return total, hidden.new_empty(0) if grad_hidden is None else grad_hidden, grad_weight


_HEAD_OP = []  # the custom op, once registered


def head_op():
    """The head as one custom op, registered on first use (importing this module registers nothing)."""
    if _HEAD_OP:
        return _HEAD_OP[0]
    op = torch.library.custom_op("roleplay_tuner::chunked_head_cross_entropy", _head_loss_and_gradients,
                                 mutates_args=())

    @op.register_fake
    def _(hidden, weight, targets, chunk_size, dtype, grad_hidden_wanted, grad_weight_wanted):
        return (hidden.new_empty((), dtype=torch.float32),
                torch.empty_like(hidden) if grad_hidden_wanted else hidden.new_empty(0),
                weight.new_empty(weight.shape if grad_weight_wanted else (0,), dtype=torch.float32))
    _HEAD_OP.append(op)
    return op


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of `hidden @ weight.T` against `targets`, with gradients computed eagerly.

    Each chunk's softmax is taken in place of its logits, and the gradients are scaled in place in the
    backward pass, so the only `[rows, vocabulary]` buffer is one chunk's logits and the only
    `weight`-sized one is the gradient itself (545 MB each for Qwen2.5-0.5B's head, at the step's peak).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                dtype: torch.dtype):
        wanted = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total, grad_hidden, grad_weight = head_op()(hidden, weight, targets, chunk_size, dtype, *wanted)
        # not inputs or outputs: kept on ctx, released after use
        ctx.grads = (grad_hidden if wanted[0] else None, grad_weight if wanted[1] else None)
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
                None, None, None)


def trained_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices of the hidden states that predict a trained token, those tokens)."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE
    batch, pos = mask.nonzero(as_tuple=True)
    return batch * labels.shape[1] + pos, shifted[batch, pos]


def summed_loss(model, inputs: dict, labels: torch.Tensor, chunk_size: int = 2048,
                fused_head: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
    """Sum (not mean) of token cross-entropies over trained tokens; the caller divides by its token count.

    `inputs` are the model inputs of a padded or packed batch (`core.data.batching`). `fused_head`: a fused
    linear cross-entropy kernel (hidden, weight, targets) -> summed loss (Liger's) in place of the chunked head.
    """
    inputs, index, targets = split_loss_positions(inputs, labels)
    selected = trained_hidden(model, inputs, index)
    head = model.get_output_embeddings()
    if fused_head is not None:
        return fused_head(selected, head.weight, targets)
    device = selected.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else selected.dtype
    with torch.autocast(device_type=device, enabled=False):
        return _ChunkedHeadCrossEntropy.apply(selected, head.weight, targets, chunk_size, dtype)


def split_loss_positions(inputs: dict, labels: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(model inputs without the loss positions, trained rows, their targets): the batch's, or found on the device."""
    model_inputs = {k: v for k, v in inputs.items() if k not in (LOSS_ROWS, LOSS_TARGETS)}
    if LOSS_ROWS in inputs:
        return model_inputs, inputs[LOSS_ROWS], inputs[LOSS_TARGETS]
    return (model_inputs, *trained_positions(labels))


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
    inputs, index, targets = split_loss_positions(inputs, labels)
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
    model_inputs = {k: v for k, v in inputs.items() if k not in (LOSS_ROWS, LOSS_TARGETS)}
    logits = model(**model_inputs, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=IGNORE, reduction="sum")
