"""The run plan: a training request (`TrainConfig`, the options as the user gave them) resolved once into what the
run does where the request left a choice: the learning rate and where it came from, the batch policy, the
attention of packed rows, the objective, the device and the precision.

The request is never changed (it is frozen once validated); the plan is frozen too. `--lr auto` leaves the rate
open until its search (core/train/lr_search.py) has chosen one: `with_lr` then gives the plan that trains. The
run's train_config.json holds both (`run_config`), and a resumed run reads the plan its checkpoint holds
(`saved_plan`) for what the run's start decided: the searched rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import AUTO, TrainConfig, default_batch_tokens
from core.errors import CheckpointError
from core.model.patches.packed_attention import choose
from core.run_files import CONFIG_FILE


@dataclass(frozen=True)
class Plan:
    lr: float | str         # the peak learning rate; AUTO until --lr auto's search has chosen it
    lr_from: str            # where the rate came from
    batch_size: int         # units per micro-batch and process, when batch_tokens is 0
    batch_tokens: int       # fill each micro-batch (per process) with whole units up to this many tokens; 0: off
    batch_from: str         # the option (or default) that decided between the two
    attention: str          # the packed rows' attention backend (core/model/patches/packed_attention.py); "": padded
    attention_from: str     # why that backend
    objective: str          # --objective
    device: str
    precision: str          # the autocast dtype ("float32": none)


def resolve(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype) -> Plan:
    """The plan of `config` on `device`; with --lr auto its rate is still AUTO (see `with_lr`)."""
    tokens = default_batch_tokens(config.batch_tokens, device.type, config.max_length)
    batch_from = ("the CUDA default" if config.batch_tokens < 0 else "--batch_tokens") if tokens else "--batch_size"
    attention, attention_from = choose(config.attn_implementation, device, config.compile) if config.packing else (
        "", "--no-packing")
    return Plan(config.lr, lr_source(config), config.batch_size, tokens, batch_from, attention, attention_from,
                config.objective, str(device), str(amp_dtype).removeprefix("torch."))


def lr_source(config: TrainConfig) -> str:
    if config.lr == AUTO:
        return "--lr auto"
    if config.given is None or "lr" in config.given:
        return "--lr"
    return "the LoRA default" if config.lora else "the default"


def with_lr(plan: Plan, lr: float, source: str) -> Plan:
    return dataclasses.replace(plan, lr=lr, lr_from=source)


def run_config(config: TrainConfig, plan: Plan) -> dict:
    """train_config.json: the request's options, and the plan under "plan"."""
    return {**config.to_dict(), "plan": dataclasses.asdict(plan)}


def saved_plan(checkpoint: Path) -> dict:
    """The plan a checkpoint's run trained with (its train_config.json), its rate checked."""
    path = checkpoint / CONFIG_FILE
    plan = json.loads(path.read_text()).get("plan")
    lr = plan.get("lr") if isinstance(plan, dict) else None
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise CheckpointError(f"{path}: its plan's 'lr' ({lr!r}) is not the positive rate --lr auto chose; pass --lr "
                              "with the rate to resume at")
    return plan
