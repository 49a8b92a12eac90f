"""Liger's Triton kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy) in place of the stock layers, on CUDA.

The norm, MLP and rotary swaps are Liger's own `_apply_liger_kernel_to_instance` (what transformers'
Trainer calls for `use_liger_kernel`), with its cross-entropy patches off: the model's forward stays
stock, and the fused linear cross-entropy runs inside the selective head (`selective_head.summed_loss`)
on the trained rows only, summed, so the loss is still a sum over trained tokens. Liger reads the count
of its targets on the host (one `.item()` per step), so a step with it is not free of syncs.
Nothing is imported until the patch is asked for: triton is a large install that the CPU never needs.
"""

from __future__ import annotations

import torch

INSTALL = "pip install -r requirements-gpu.txt"


def liger_refusal(model, device: torch.device) -> str | None:
    """None where Liger's kernels can run on this model and device; otherwise why not."""
    if device.type != "cuda":
        return f"Liger's kernels need CUDA (the device is {device.type})"
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as error:
        return f"liger_kernel does not import ({error}; {INSTALL})"
    model_type = model.config.model_type
    return None if model_type in MODEL_TYPE_TO_APPLY_LIGER_FN else f"Liger has no kernels for {model_type} models"


def apply_liger(model) -> None:
    """Swap in Liger's RMSNorm, SwiGLU and RoPE on `model` (its loss is left to `summed_cross_entropy`)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


def summed_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of `hidden @ weight.T` against `targets`, by Liger's fused kernel: the logits are
    never whole in memory, the matmuls run in the caller's autocast dtype, the weight's gradient accumulates in fp32."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    return LigerFusedLinearCrossEntropyLoss(reduction="sum", accum_dtype=torch.float32)(weight, hidden, targets)
