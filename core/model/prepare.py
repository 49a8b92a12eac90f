"""Every change this project makes to a stock transformers model, in one place: an ordered table of patches.

`PATCHES` lists them in the order applied. Each is a `Patch`: `why_not(target)` says why it does not
apply here (None: it does), `apply(target)` makes the change and returns the text the `Model:` log
line shows. A skipped patch is recorded with its reason in `Prepared.skipped`; a reason that is not
merely "not asked for" is also logged as a note. A new backend or speed-up is one file under
`core/model/patches/` and one row here. The process-level wrapping (DDP, FSDP2) is not a change to
the model and is done by the training setup (`core.train.distributed.wrap`). Nothing here happens at
import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.config import AdapterOptions, HardwareOptions
from core.errors import ConfigError
from core.model import adapters
from core.model.log_probs import trained_token_log_probs
from core.model.patches import packed_attention
from core.model.patches.last_layer import trim_last_layer
from core.model.patches.lean_layers import make_lean
from core.model.patches.liger import apply_liger, liger_refusal, summed_cross_entropy
from core.model.patches.selective_head import head_op, selective_head_refusal, summed_loss, summed_loss_full_logits
from core.utils import autocast

NOT_ASKED = "not asked for"


class SummedLoss(torch.nn.Module):
    """The model and its loss as one module: sum of token cross-entropies over trained tokens.

    One module so that DDP and FSDP run their hooks around the selective head too, which reads the
    head's weight directly instead of calling the head.
    """

    def __init__(self, model: torch.nn.Module, selective: bool, head_chunk_rows: int,
                 attention: packed_attention.Backend | None = None):
        super().__init__()
        self.model = model
        self.selective = selective
        self.head_chunk_rows = head_chunk_rows
        self.attention = attention  # packed rows: the backend whose per-step argument the batch gets
        self.fused_head = None  # the selective head's fused linear cross-entropy (Liger's), when one is used

    def forward(self, inputs: dict, labels: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        if self.attention is not None:
            inputs = packed_attention.step_inputs(self.attention, inputs)
        if per_token:  # log-probabilities of the trained tokens (preference objectives)
            return trained_token_log_probs(self.model, inputs, labels, self.selective, self.head_chunk_rows)
        if self.selective:
            return summed_loss(self.model, inputs, labels, self.head_chunk_rows, self.fused_head)
        return summed_loss_full_logits(self.model, inputs, labels)


@dataclass
class Prepared:
    """A model ready to train, and the module that computes its loss (wrapped for DDP or FSDP when distributed)."""
    model: torch.nn.Module
    loss_module: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype
    packed: bool = False                  # batches are packed rows, not padded ones
    patches: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # patch name -> why it does not apply

    @property
    def selective(self) -> bool:
        return getattr(self.loss_module, "module", self.loss_module).selective

    def loss_sum(self, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        """Sum of token cross-entropies over trained tokens, under the run's autocast."""
        with autocast(self.device, self.amp_dtype):
            return self.loss_module(inputs, labels)

    def token_log_probs(self, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        """log p of each trained token (row-major order), under the run's autocast."""
        with autocast(self.device, self.amp_dtype):
            return self.loss_module(inputs, labels, per_token=True)


@dataclass
class Target:
    """What the patches read and change."""
    prepared: Prepared
    hardware: HardwareOptions
    adapter: AdapterOptions
    max_length: int
    adapter_from: Path | None
    attention: tuple[str, str] | None = None  # the packed-attention backend and why, when the caller chose it
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> torch.nn.Module:
        return self.prepared.model


@dataclass(frozen=True)
class Patch:
    name: str
    why_not: Callable[[Target], str | None]
    apply: Callable[[Target], str]


# The patches, each a "why not" and an "apply" ------------------------------------------------------

def lora_why_not(t: Target) -> str | None:
    return None if t.adapter.lora else f"{NOT_ASKED} (--lora)"


def lora_apply(t: Target) -> str:
    model = t.model
    if t.adapter.load_in_4bit:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.hardware.gradient_checkpointing)
    model = adapters.attach_lora(model, t.adapter)
    if t.adapter_from is not None:
        adapters.load_adapter(model, t.adapter_from)
    t.prepared.model = t.prepared.loss_module.model = model
    trainable, total = adapters.parameter_counts(model)
    o = t.adapter
    return f"LoRA r={o.lora_r} alpha={o.lora_alpha:g} on {o.lora_target_modules} ({trainable:,} of {total:,} " \
           "parameters trainable)"


def lean_why_not(t: Target) -> str | None:
    if t.prepared.device.type != "cpu":
        return f"only on the CPU (the device is {t.prepared.device.type})"
    return None


def lean_apply(t: Target) -> str:
    changed = make_lean(t.model)
    if t.adapter.lora:
        t.notes.append("lean SwiGLU is off for MLPs whose projections carry adapters (it would bypass them)")
    return f"lean RMSNorm/SwiGLU on {changed} modules (cpu)" if changed else ""


def packing_why_not(t: Target) -> str | None:
    reason = f"{NOT_ASKED} (--no-packing)" if not t.hardware.packing else packed_attention.cannot_pack(
        t.model, t.max_length)
    if reason and t.hardware.attn_implementation != "auto":
        t.notes.append(f"--attn_implementation {t.hardware.attn_implementation} is unused: it chooses the attention "
                       "of packed rows, and these batches are padded")
    if reason is None or not t.hardware.packing:
        return reason
    return f"{reason}; training on right-padded batches of similar lengths"


def packing_apply(t: Target) -> str:
    name, why = t.attention or packed_attention.choose(t.hardware.attn_implementation, t.prepared.device,
                                                       t.hardware.compile)
    chosen = packed_attention.backend(name)
    t.prepared.packed = True
    t.prepared.loss_module.attention = chosen
    t.model.set_attn_implementation(packed_attention.register(chosen))
    return f"packed attention: {name}, {chosen.kernel} ({why})"


def checkpointing_why_not(t: Target) -> str | None:
    return None if t.hardware.gradient_checkpointing else f"{NOT_ASKED} (--gradient_checkpointing)"


def checkpointing_apply(t: Target) -> str:
    model = t.model
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if t.adapter.lora:  # frozen embeddings: make their output require grad, or checkpointed layers get none
        model.enable_input_require_grads()
    return "gradient checkpointing"


def selective_why_not(t: Target) -> str | None:
    refusal = selective_head_refusal(t.model)
    return f"{refusal}; the loss takes the model's full logits" if refusal else None


def selective_apply(t: Target) -> str:
    t.prepared.loss_module.selective = True
    head_op()  # registered before any compiled step traces the head
    return f"selective head: logits at trained positions only, {t.hardware.head_chunk_rows} rows at a time"


def liger_why_not(t: Target) -> str | None:
    wanted = t.hardware.liger
    if wanted == "off":
        return f"{NOT_ASKED} (--liger off)"
    refusal = liger_refusal(t.model, t.prepared.device)
    if refusal and wanted == "on":
        raise ConfigError(f"--liger on cannot run here: {refusal}; use --liger auto or off")
    if refusal and t.prepared.device.type != "cuda":  # auto, off CUDA: expected, not worth a note
        return f"{NOT_ASKED} (--liger auto: {refusal})"
    return refusal


def liger_apply(t: Target) -> str:
    apply_liger(t.model.get_base_model() if t.adapter.lora else t.model)  # the stock model under PEFT's wrapper
    if not t.prepared.selective:
        return "Liger RMSNorm/SwiGLU/RoPE (the loss takes the model's full logits)"
    t.prepared.loss_module.fused_head = summed_cross_entropy
    return "Liger RMSNorm/SwiGLU/RoPE and fused linear cross-entropy in the selective head"


def last_layer_why_not(t: Target) -> str | None:
    return None if t.prepared.selective else "it serves the selective head, which is off"


def last_layer_apply(t: Target) -> str:
    return "last layer: MLP on trained rows only" if trim_last_layer(t.model) else ""


def compile_why_not(t: Target) -> str | None:
    if not t.hardware.compile:
        return f"{NOT_ASKED} (--compile)"
    if not t.prepared.selective:
        raise ConfigError(f"--compile compiles the decoder body of the selective head, which this model cannot use "
                          f"({selective_head_refusal(t.model)}); run without --compile")
    return None


def compile_apply(t: Target) -> str:
    t.model.get_decoder().compile()
    return "torch.compile of the decoder body"


PATCHES = (
    Patch("LoRA", lora_why_not, lora_apply),  # first, so that later patches see the wrapped layers
    Patch("lean layers", lean_why_not, lean_apply),
    Patch("packing", packing_why_not, packing_apply),
    Patch("gradient checkpointing", checkpointing_why_not, checkpointing_apply),
    Patch("selective head", selective_why_not, selective_apply),
    Patch("Liger kernels", liger_why_not, liger_apply),  # after the selective head, whose loss it fuses
    Patch("trimmed last layer", last_layer_why_not, last_layer_apply),
    Patch("compile", compile_why_not, compile_apply),
)


def prepare_model(model, hardware: HardwareOptions, adapter: AdapterOptions, max_length: int, device: torch.device,
                  amp_dtype: torch.dtype, log=print, adapter_from: Path | None = None,
                  attention: tuple[str, str] | None = None) -> Prepared:
    """Apply `PATCHES` in order and log what changed. `adapter_from`: a LoRA checkpoint to resume the adapters of;
    `attention`: (backend, why) for packed rows, as a training plan chose it (otherwise chosen here)."""
    if not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit model is placed on its GPU when it loads
        model.to(device)
    model.train()  # from_pretrained returns eval mode, in which gradient checkpointing is inactive
    prepared = Prepared(model, SummedLoss(model, False, hardware.head_chunk_rows), device, amp_dtype)
    target = Target(prepared, hardware, adapter, max_length, adapter_from, attention)
    for patch in PATCHES:
        reason = patch.why_not(target)
        if reason is not None:
            prepared.skipped[patch.name] = reason
            continue
        described = patch.apply(target)
        if described:
            prepared.patches.append(described)
        else:
            prepared.skipped[patch.name] = "nothing in this model it recognises"
    log("Model: " + ("; ".join(prepared.patches) or "stock"))
    for name, reason in prepared.skipped.items():
        if not reason.startswith(NOT_ASKED):
            target.notes.append(f"{name} is off: {reason}")
    for note in target.notes:
        log(f"Note: {note}")
    return prepared


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder's layers (FSDP's units), or none where the model keeps them elsewhere."""
    return list(getattr(model.get_decoder(), "layers", []))


def set_stop_tokens(model, tokenizer, end_of_turn_ids: list[int]) -> list[int]:
    """Make generation stop at the end-of-turn tokens the model is trained to emit; return the stop list."""
    existing = model.generation_config.eos_token_id
    existing = [] if existing is None else [existing] if isinstance(existing, int) else list(existing)
    stop = existing + [t for t in end_of_turn_ids if t not in existing]
    model.generation_config.eos_token_id = stop[0] if len(stop) == 1 else stop
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return stop
