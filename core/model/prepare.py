"""Every change this project makes to a stock transformers model, in one place, chosen by device and options.

`prepare_model` moves the model to its device and applies, in order:
  adapters            LoRA through PEFT (--lora; first, so that later changes see the wrapped layers)
  lean layers         RMSNorm/SwiGLU that keep fewer activations (core/model/patches/lean_layers.py; CPU only)
  packed attention    per-sequence SDPA for packed rows (core/model/patches/packed_attention.py), unless the model
                      already runs FlashAttention, which reads the packed boundaries natively
  gradient checkpointing (--gradient_checkpointing)
  selective head      the loss takes logits at trained positions only (core/model/patches/selective_head.py)
  trimmed last layer  the last layer's MLP on trained rows only (core/model/patches/last_layer.py)
  compile             torch.compile of the decoder body (--compile)
  distributed         DDP, or FSDP2 with each decoder layer a unit, when launched on several processes
The model and its loss are one module (`SummedLoss`), so that DDP and FSDP run their hooks around the
selective head too, which reads the head's weight directly instead of calling the head. Each applied
change is listed in `Prepared.patches` and in the log; a change that does not apply is logged with
the reason. Nothing here happens at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.config import TrainConfig
from core.errors import ConfigError
from core.model import adapters
from core.model.patches import packed_attention
from core.model.patches.last_layer import trim_last_layer
from core.model.patches.lean_layers import make_lean
from core.model.patches.selective_head import selective_head_refusal, summed_loss, summed_loss_full_logits
from core.train import distributed
from core.train.distributed import Dist
from core.utils import autocast


class SummedLoss(torch.nn.Module):
    """The model and its loss as one module: sum of token cross-entropies over trained tokens."""

    def __init__(self, model: torch.nn.Module, selective: bool, head_chunk_rows: int):
        super().__init__()
        self.model = model
        self.selective = selective
        self.head_chunk_rows = head_chunk_rows

    def forward(self, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        if self.selective:
            return summed_loss(self.model, inputs, labels, self.head_chunk_rows)
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

    @property
    def selective(self) -> bool:
        return getattr(self.loss_module, "module", self.loss_module).selective

    def loss_sum(self, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        """Sum of token cross-entropies over trained tokens, under the run's autocast."""
        with autocast(self.device, self.amp_dtype):
            return self.loss_module(inputs, labels)


def prepare_model(model, config: TrainConfig, device: torch.device, amp_dtype: torch.dtype, dist: Dist | None = None,
                  log=print, adapter_from=None) -> Prepared:
    """`adapter_from`: a LoRA checkpoint whose adapter weights the fresh adapters take (resuming)."""
    if not getattr(model, "is_loaded_in_4bit", False):  # a 4-bit model is placed on its GPU when it loads
        model.to(device)
    notes = []
    if config.lora:
        model = attach_adapters(model, config, adapter_from)
    model.train()  # from_pretrained returns eval mode, in which gradient checkpointing is inactive
    prepared = Prepared(model, SummedLoss(model, False, config.head_chunk_rows), device, amp_dtype)
    if config.lora:
        trainable, total = adapters.parameter_counts(model)
        prepared.patches.append(f"LoRA r={config.lora_r} alpha={config.lora_alpha:g} on {config.lora_target_modules}"
                                f" ({trainable:,} of {total:,} parameters trainable)")
    if device.type == "cpu":
        changed = make_lean(model)
        if changed:
            prepared.patches.append(f"lean RMSNorm/SwiGLU on {changed} modules (cpu)")
        if config.lora:
            notes.append("lean SwiGLU is off for MLPs whose projections carry adapters (it would bypass them)")
    if config.packing:
        use_packed_attention(model, config, prepared, notes)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if config.lora:  # frozen embeddings: make their output require grad, or checkpointed layers get none
            model.enable_input_require_grads()
        prepared.patches.append("gradient checkpointing")
    refusal = selective_head_refusal(model)
    if refusal is None:
        prepared.loss_module.selective = True
        prepared.patches.append(f"selective head: logits at trained positions only, {config.head_chunk_rows} rows "
                                "at a time")
        if trim_last_layer(model):
            prepared.patches.append("last layer: MLP on trained rows only")
    else:
        notes.append(f"selective head is off: {refusal}; the loss takes the model's full logits")
    if config.compile:
        if refusal is not None:
            raise ConfigError(f"--compile compiles the decoder body of the selective head, which this model cannot "
                              f"use ({refusal}); run without --compile")
        model.get_decoder().compile()
        prepared.patches.append("torch.compile of the decoder body")
    prepared.loss_module, wrapped = distributed.wrap(prepared.loss_module, dist or Dist(), decoder_layers(model),
                                                     amp_dtype)
    if wrapped:
        prepared.patches.append(wrapped)
    log("Model: " + ("; ".join(prepared.patches) or "stock"))
    for note in notes:
        log(f"Note: {note}")
    return prepared


def use_packed_attention(model, config: TrainConfig, prepared: Prepared, notes: list[str]) -> None:
    """Packed rows with attention kept within each sequence, or padded batches and the reason."""
    reason = packed_attention.cannot_pack(model, config.max_length)
    if reason:
        notes.append(f"packing is off: {reason}; training on right-padded batches of similar lengths")
    elif "flash" in (model.config._attn_implementation or ""):
        prepared.patches.append(f"packed rows on {model.config._attn_implementation} (native varlen)")
    else:
        packed_attention.register()
        model.set_attn_implementation(packed_attention.ATTENTION)
        prepared.patches.append("packed attention: per-sequence SDPA")
    prepared.packed = reason is None


def attach_adapters(model, config: TrainConfig, adapter_from):
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    model = adapters.attach_lora(model, config)
    if adapter_from is not None:
        adapters.load_adapter(model, adapter_from)
    return model


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
