"""LoRA adapters through PEFT: attach them, load a checkpoint's adapter, and merge them into plain weights.

A LoRA run trains only the adapters: small low-rank matrices beside every linear projection of the
decoder layers (PEFT's "all-linear", which leaves the output head alone). Checkpoints hold the
adapter in PEFT's format; `best_model/` holds the merged model as a plain Hugging Face directory, so
chatting, evaluating and exporting need no PEFT code, with the adapter beside it in `adapter/`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.run_files import ADAPTER_FILE
from core.utils import unique_parameters

ADAPTER_DIR = "adapter"


def target_modules(value: str) -> str | list[str]:
    return "all-linear" if value == "all-linear" else [name.strip() for name in value.split(",") if name.strip()]


def attach_lora(model, config):
    """Wrap `model` in a PEFT model with fresh LoRA adapters; only they require gradients."""
    from peft import LoraConfig, get_peft_model
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=target_modules(config.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def load_adapter(model, checkpoint: Path) -> None:
    """Put a checkpoint's adapter weights into a freshly attached LoRA model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    result = set_peft_model_state_dict(model, load_file(checkpoint / ADAPTER_FILE))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{checkpoint / ADAPTER_FILE} holds weights this LoRA configuration does not have: "
                         f"{unexpected[:3]}")


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's state dict with each adapter's update added to its weight (the model is not changed)."""
    from peft.tuners.lora import LoraLayer
    base = model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
            merged[f"{name}.weight"] = (layer.weight.detach() + delta.to(layer.weight.dtype)).clone()
            if layer.bias is not None:
                merged[f"{name}.bias"] = layer.bias.detach().clone()
    for name, tensor in base.state_dict().items():
        if "lora_" not in name and ".base_layer." not in name:
            merged.setdefault(name, tensor)
    return merged


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    params = unique_parameters(model)
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
