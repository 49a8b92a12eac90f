"""Every change this project makes to a stock transformers model, in one place, chosen by device and options.

`prepare_model` moves the model to its device and applies, in order:
  lean layers         RMSNorm/SwiGLU that keep fewer activations (core/lean_layers.py; CPU only)
  packed attention    per-sequence SDPA for packed rows (core/packed_attention.py), unless the model
                      already runs FlashAttention, which reads the packed boundaries natively
  gradient checkpointing (--gradient_checkpointing)
  selective head      the loss takes logits at trained positions only (core/loss.py)
  trimmed last layer  the last layer's MLP on trained rows only (core/last_layer.py)
  compile             torch.compile of the decoder body (--compile)
Each applied change is listed in `Prepared.patches` and in the log; a change that does not apply is
logged with the reason. Nothing here happens at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core import packed_attention
from core.config import ConfigError, TrainConfig
from core.last_layer import trim_last_layer
from core.lean_layers import make_lean
from core.loss import selective_head_refusal, summed_loss, summed_loss_full_logits
from core.utils import autocast


@dataclass
class Prepared:
    """A model ready to train, and how its loss is computed."""
    model: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype
    head_chunk_rows: int
    body: torch.nn.Module | None = None   # the (optionally compiled) decoder, when the selective head applies
    packed: bool = False                  # batches are packed rows, not padded ones
    patches: list[str] = field(default_factory=list)

    def loss_sum(self, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        """Sum of token cross-entropies over trained tokens, under the run's autocast."""
        with autocast(self.device, self.amp_dtype):
            if self.body is not None:
                return summed_loss(self.model, inputs, labels, self.head_chunk_rows, body=self.body)
            return summed_loss_full_logits(self.model, inputs, labels)


def prepare_model(model, config: TrainConfig, device: torch.device, amp_dtype: torch.dtype, log=print) -> Prepared:
    model.to(device)
    model.train()  # from_pretrained returns eval mode, in which gradient checkpointing is inactive
    prepared = Prepared(model, device, amp_dtype, config.head_chunk_rows)
    notes = []
    if device.type == "cpu":
        changed = make_lean(model)
        if changed:
            prepared.patches.append(f"lean RMSNorm/SwiGLU on {changed} modules (cpu)")
    if config.packing:
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
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        prepared.patches.append("gradient checkpointing")
    refusal = selective_head_refusal(model)
    if refusal is None:
        prepared.body = model.get_decoder()
        prepared.patches.append(f"selective head: logits at trained positions only, {config.head_chunk_rows} rows "
                                "at a time")
        if trim_last_layer(model):
            prepared.patches.append("last layer: MLP on trained rows only")
    else:
        notes.append(f"selective head is off: {refusal}; the loss takes the model's full logits")
    if config.compile:
        if prepared.body is None:
            raise ConfigError(f"--compile compiles the decoder body of the selective head, which this model cannot "
                              f"use ({refusal}); run without --compile")
        prepared.body = torch.compile(prepared.body)
        prepared.patches.append("torch.compile of the decoder body")
    log("Model: " + ("; ".join(prepared.patches) or "stock"))
    for note in notes:
        log(f"Note: {note}")
    return prepared


def set_stop_tokens(model, tokenizer, end_of_turn_ids: list[int]) -> list[int]:
    """Make generation stop at the end-of-turn tokens the model is trained to emit; return the stop list."""
    existing = model.generation_config.eos_token_id
    existing = [] if existing is None else [existing] if isinstance(existing, int) else list(existing)
    stop = existing + [t for t in end_of_turn_ids if t not in existing]
    model.generation_config.eos_token_id = stop[0] if len(stop) == 1 else stop
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return stop
