"""Memory-lean RMSNorm and SwiGLU MLP for training: the same outputs, fewer saved activations.

Eager autograd keeps every intermediate of these elementwise chains for the backward pass: for a
SwiGLU MLP the gate, the up projection, silu(gate) and their product (4 x intermediate size per token
and layer), for RMSNorm the input and its normalised copy. The functions here save only what their
backward cannot recompute from elementwise work (MLP: input, gate, up; RMSNorm: input and inverse
norm), which is about a third of a Llama-style layer's activations, at no extra matrix multiply.

`make_lean(model)` swaps the `forward` of the modules it recognises exactly (by class, config and
plain `nn.Linear` projections, so a wrapped projection such as a LoRA layer is never bypassed) and
leaves every other module, and the weights, untouched: checkpoints are unaffected. It is a CPU
measure, applied by `core.model.prepare`; on a GPU these chains are cheap next to kernel launches.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

# Norms computing weight * (x / rms(x)) in float32 with the weight applied after casting back (Llama style).
RMS_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm", "Qwen2MoeRMSNorm", "Phi3RMSNorm",
             "OlmoRMSNorm", "GraniteRMSNorm"}
# MLPs computing down(act(gate(x)) * up(x)) without biases.
SWIGLU_MLPS = {"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP", "OlmoMLP", "GraniteMLP"}


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix multiplies would run in here: the autocast dtype when autocast is on."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        normed = x.float() * rstd
        grad_weight = (grad * normed.to(x.dtype)).reshape(-1, weight.shape[0]).sum(0).to(weight.dtype)
        grad_normed = (grad * weight).float()
        grad_x = rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


class _SwiGLU(torch.autograd.Function):
    """down(silu(x @ gate.T) * (x @ up.T)), recomputing silu and the product in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor):
        dtype = _compute_dtype(x)
        xc = x.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            gate = F.linear(xc, w_gate.to(dtype))
            up = F.linear(xc, w_up.to(dtype))
            out = F.linear(F.silu(gate) * up, w_down.to(dtype))
        ctx.save_for_backward(xc, gate, up, w_gate, w_up, w_down)
        ctx.x_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, gate, up, w_gate, w_up, w_down = ctx.saved_tensors
        dtype = x.dtype
        x2, grad2 = x.reshape(-1, x.shape[-1]), grad.to(dtype).reshape(-1, grad.shape[-1])
        gate2, up2 = gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])
        silu = F.silu(gate2)
        grad_down = grad2.T @ (silu * up2)
        grad_hidden = grad2 @ w_down.to(dtype)
        grad_up = grad_hidden * silu
        grad_gate = torch.ops.aten.silu_backward(grad_hidden.mul_(up2), gate2)
        grad_x = torch.addmm(grad_gate @ w_gate.to(dtype), grad_up, w_up.to(dtype))
        return (grad_x.reshape(x.shape).to(ctx.x_dtype), (grad_gate.T @ x2).to(w_gate.dtype),
                (grad_up.T @ x2).to(w_up.dtype), grad_down.to(w_down.dtype))


def _lean_rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def _lean_swiglu_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _SwiGLU.apply(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)


def _is_plain_swiglu(module) -> bool:
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return (type(module).__name__ in SWIGLU_MLPS
            and all(type(p) is torch.nn.Linear and p.bias is None for p in projections)
            and (isinstance(module.act_fn, torch.nn.SiLU) or type(module.act_fn).__name__ == "SiLUActivation"))


def make_lean(model: torch.nn.Module) -> int:
    """Give recognised RMSNorm and SwiGLU modules their lean forward; return how many were changed."""
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name in RMS_NORMS and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_lean_rms_norm_forward, module)
            changed += 1
        elif _is_plain_swiglu(module):
            module.forward = types.MethodType(_lean_swiglu_forward, module)
            changed += 1
    return changed
