"""The request (TrainConfig) is fixed once validated; the run plan (core/train/plan.py) says what it resolved to."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.config import LORA_LR, parse_args
from core.train.plan import resolve, run_config, with_lr

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def test_the_config_cannot_be_assigned_after_validation():
    config = parse_args(["--data_path", "x", "--lr", "auto"])
    for name, value in (("lr", 1e-4), ("batch_tokens", 4096), ("objective", "dpo"), ("anything", 1)):
        with pytest.raises(dataclasses.FrozenInstanceError, match=f"cannot assign to field '{name}'"):
            setattr(config, name, value)
    assert config.lr == "auto" and config.batch_tokens == -1


@pytest.mark.parametrize("argv, lr, source", [
    ([], 2e-5, "the default"),
    (["--lora"], LORA_LR, "the LoRA default"),
    (["--lora", "--lr", "1e-5"], 1e-5, "--lr"),
    (["--lr", "auto"], "auto", "--lr auto"),
])
def test_the_plan_says_which_rate_and_where_it_came_from(argv, lr, source):
    plan = resolve(parse_args(["--data_path", "x", *argv]), CPU, torch.float32)
    assert (plan.lr, plan.lr_from) == (lr, source)


def test_the_plan_resolves_the_batch_policy_and_attention_per_device_and_leaves_the_request_as_given():
    config = parse_args(["--data_path", "x", "--max_length", "20000"])
    on_cpu, on_cuda = resolve(config, CPU, torch.float32), resolve(config, CUDA, torch.bfloat16)
    assert (on_cpu.batch_tokens, on_cpu.batch_from, on_cpu.attention) == (0, "--batch_size", "eager")
    assert (on_cuda.batch_tokens, on_cuda.batch_from, on_cuda.attention) == (20000, "the CUDA default", "varlen")
    assert (on_cpu.precision, on_cuda.precision, on_cuda.objective) == ("float32", "bfloat16", "sft")
    given = resolve(parse_args(["--data_path", "x", "--batch_tokens", "0", "--no-packing"]), CUDA, torch.bfloat16)
    assert (given.batch_tokens, given.batch_from, given.attention) == (0, "--batch_size", "")
    assert config.batch_tokens == -1

    chosen = with_lr(resolve(parse_args(["--data_path", "x", "--lr", "auto"]), CPU, torch.float32), 6e-5, "searched")
    saved = run_config(config, chosen)
    assert saved["lr"] == 2e-5 and saved["max_length"] == 20000  # the request, as given
    assert saved["plan"]["lr"] == 6e-5 and saved["plan"]["lr_from"] == "searched"
    with pytest.raises(dataclasses.FrozenInstanceError):
        chosen.lr = 1.0
