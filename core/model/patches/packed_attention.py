"""Attention for packed rows (core/data/batching.py: `pack`): one backend per `--attn_implementation`.

A packed row's sequence boundaries are made once per batch on the host (`cu_seq_lens_q`, `max_length_q`,
the per-sequence lengths). `step_inputs` turns them, once per step and on the device without reading
anything back, into the argument the chosen backend's kernel needs, and hands it to the model in the
`attention_mask` slot as a 4D object: transformers passes a 4D mask through untouched, so it builds no
`[T, T]` mask of its own and runs no packed-sequence detection (whose `.all()` would stall the GPU). Each
layer then makes one call:

  varlen  FlashAttention-2's `flash_attn_varlen_func` when `flash_attn` imports, else torch's
          `varlen_attn`: no mask, no wasted scores; CUDA only (attention_varlen.py)
  flex    `flex_attention` with a block-diagonal causal BlockMask; its backward is CUDA only (attention_flex.py)
  sdpa    SDPA with a block-diagonal causal boolean mask; forward and backward everywhere (attention_sdpa.py)
  eager   causal SDPA on each sequence alone, split by the host's lengths: one call per sequence, no
          masked-out score computed; specialises a compiled graph on the lengths (this file)

Calls without a packed argument (generation) go to the stock SDPA function with the masks SDPA would
get. `register(backend)` adds the backend's name to transformers' registries; `core.model.prepare` calls
it. Importing this module changes nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from core.data.batching import LENGTHS, LOSS_ROWS, LOSS_TARGETS
from core.errors import ConfigError
from core.model.patches.attention_backend import Backend, boundaries, registered_name

# Measured by bench/attention_cpu.py (SmolLM2-135M forward + backward, 8 and 20 sequences per row):
CPU_DEFAULT = "eager"
MODEL_KEYS = ("input_ids", "position_ids", LOSS_ROWS, LOSS_TARGETS)


ATTENTION = registered_name(CPU_DEFAULT)  # the attention of packed rows on the CPU by default


def per_sequence_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs):
    """Causal SDPA per packed sequence: `query` [1, heads, tokens, head_dim] -> [1, tokens, heads, head_dim]."""
    lengths = kwargs.pop(LENGTHS, None)
    if lengths is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # split (not slices): its backward is one concatenation, not a zero-filled copy per sequence
    gqa = query.shape[1] != key.shape[1]
    parts = [torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa).transpose(1, 2)
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(parts, dim=1), None


EAGER = Backend("eager", per_sequence_attention, boundaries, (LENGTHS,), "causal SDPA per sequence")


def _sdpa() -> Backend:
    from core.model.patches.attention_sdpa import SDPA
    return SDPA


def _flex() -> Backend:
    from core.model.patches.attention_flex import FLEX
    return FLEX


def _varlen() -> Backend:
    from core.model.patches.attention_varlen import varlen_backend
    return varlen_backend()


# The backends by --attn_implementation value: each built on first use (flex and varlen import kernels that only
# CUDA runs), each module importing only attention_backend.py, never this table.
BACKENDS: dict[str, Callable[[], Backend]] = {"eager": lambda: EAGER, "sdpa": _sdpa, "flex": _flex, "varlen": _varlen}


def backend(name: str) -> Backend:
    return BACKENDS[name]()


def varlen_available() -> bool:
    """flash_attn, or torch's own varlen_attn (looked up, not imported: the submodule is an attribute of
    torch.nn.attention only once something has imported it)."""
    return any(importlib.util.find_spec(name) is not None for name in ("flash_attn", "torch.nn.attention.varlen"))


def choose(requested: str, device: torch.device, compile: bool) -> tuple[str, str]:
    """(backend name, why): an explicit choice is checked against the device; `auto` picks the fastest here."""
    cuda = device.type == "cuda"
    if requested == "varlen" and not cuda:
        raise ConfigError(f"--attn_implementation varlen needs a CUDA GPU (its kernels have no {device.type} version); "
                          "use auto, sdpa or eager")
    if requested == "flex" and not cuda:
        raise ConfigError(f"--attn_implementation flex trains on CUDA only (flex attention's backward has no "
                          f"{device.type} kernel); use auto, sdpa or eager")
    if requested != "auto":
        return requested, f"--attn_implementation {requested}"
    if cuda:
        return ("varlen", "auto on CUDA: a variable-length kernel") if varlen_available() else (
            "flex", "auto on CUDA: this torch has no varlen kernel and flash_attn is not installed")
    if compile:
        return "sdpa", "auto with --compile: one call per layer compiles to one graph for any lengths"
    return CPU_DEFAULT, f"auto on {device.type}: the fastest there when not compiled, by bench/attention_cpu.py"


def step_inputs(chosen: Backend, inputs: dict) -> dict:
    """The model inputs of one step: a packed batch's boundaries turned into `chosen`'s attention argument."""
    if "cu_seq_lens_q" not in inputs:
        return inputs
    kept = {k: inputs[k] for k in MODEL_KEYS + chosen.host_keys if k in inputs}
    return {**kept, "attention_mask": chosen.step_argument(inputs)}


def register(chosen: Backend) -> str:
    """Make `chosen` a name transformers accepts; generation under it gets the masks SDPA would get."""
    AttentionInterface.register(chosen.registered_name, chosen.attend)
    AttentionMaskInterface.register(chosen.registered_name, sdpa_mask)
    return chosen.registered_name


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
