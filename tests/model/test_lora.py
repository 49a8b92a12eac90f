"""LoRA runs on the tiny Qwen2 with a 1k vocabulary: only adapters train, best_model/ is the merged plain model,
resume is exact."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, assert_error, cli, make_config, make_run, sample_data
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.errors import TrainingStopped
from core.train.run_setup import setup
from core.train.step import accumulate_gradients
from core.trainer import fit

QUIET = dict(log=lambda *_: None)
LORA = dict(lora=True, lora_r=4, lora_alpha=8.0, lora_dropout=0.1, lr=1e-2)


def test_only_adapter_weights_change_and_best_model_is_the_merged_plain_model(tmp_path, tiny_qwen_1k_dir, cache_dir):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, epochs=2, **LORA)
    assert run.prepared.patches[0].startswith("LoRA r=4 alpha=8 on all-linear")
    summary = fit(run, **QUIET)
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"] / 10
    stock = dict(AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir).named_parameters())
    changed = set()
    for name, param in run.prepared.model.named_parameters():
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if "lora_" in name:
            changed.add(name)
        else:
            assert torch.equal(param.detach(), stock[plain].detach()), name  # the base model never moves
    assert any("lora_B" in n and run.prepared.model.get_parameter(n).abs().sum() > 0 for n in changed)
    out = tmp_path / "out"
    assert (out / "epoch_2" / "adapter_model.safetensors").is_file() and not (out / "epoch_2" /
                                                                               "model.safetensors").exists()
    assert (out / "best_model" / "adapter" / "adapter_config.json").is_file()
    # best_model/ loads with transformers alone, and its logits are the adapter model's.
    ids = torch.randint(0, len(run.tokenizer), (1, 24), generator=torch.Generator().manual_seed(0))
    probe = (f"import sys, torch; from transformers import AutoModelForCausalLM\n"
             f"model = AutoModelForCausalLM.from_pretrained({str(out / 'best_model')!r}).eval()\n"
             f"assert 'peft' not in sys.modules\n"
             f"torch.save(model(input_ids=torch.tensor({ids.tolist()})).logits, {str(tmp_path / 'logits.pt')!r})")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = torch.load(tmp_path / "logits.pt", weights_only=True)
    best_step = json.loads((out / "best_model" / "best.json").read_text())["step"]
    assert best_step == summary["best_step"]
    adapter_model = run.prepared.model.eval()
    if best_step == summary["steps"]:  # the adapters in memory are best_model's
        with torch.no_grad():
            live = adapter_model(input_ids=ids).logits
        assert (merged - live).abs().max() < 1e-4


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(tmp_path, tiny_qwen_1k_dir, cache_dir):
    grads = []
    for checkpointing in (False, True):
        run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, gradient_checkpointing=checkpointing,
                       output_dir=str(tmp_path / f"out-{checkpointing}"), **{**LORA, "lora_dropout": 0.0})
        accumulate_gradients(run, [run.data.train_idx[:4]])
        grads.append({n: p.grad.clone() for n, p in run.prepared.model.named_parameters() if p.grad is not None})
    assert grads[0] and set(grads[0]) == set(grads[1])  # every adapter gets its gradient through checkpointing
    for name, grad in grads[0].items():
        assert (grads[1][name] - grad).norm() <= 1e-5 * grad.norm() + 1e-9, name


def test_a_lora_run_stopped_by_sigterm_resumes_to_the_uninterrupted_run(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 30)
    options = dict(epochs=2, batch_size=2, grad_accum_steps=2, save_steps=3, eval_steps=2, log_steps=1, **LORA)
    fit(setup(make_config(tmp_path, tiny_qwen_1k_dir, cache_dir, output_dir=str(tmp_path / "reference"), **options),
              **QUIET), **QUIET)
    run = setup(make_config(tmp_path, tiny_qwen_1k_dir, cache_dir, **options), **QUIET)

    def sigterm_in_step_5(name, run, index=None, **details):
        if name == "micro_batch" and run.state.step == 4 and index == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    run.on_event = sigterm_in_step_5
    with pytest.raises(TrainingStopped):
        fit(run, **QUIET)
    resumed = setup(make_config(tmp_path, tiny_qwen_1k_dir, cache_dir, resume_from_checkpoint="auto", **options),
                    **QUIET)
    assert resumed.state.step == 5
    fit(resumed, **QUIET)

    def metrics(out):
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_sec"}
                for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert metrics(tmp_path / "out") == metrics(tmp_path / "reference")
    for name, file in (("epoch_2", "adapter_model.safetensors"), ("best_model", "model.safetensors")):
        mine, theirs = load_file(tmp_path / "out" / name / file), load_file(tmp_path / "reference" / name / file)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name


def test_qlora_on_the_cpu_is_refused_in_one_line(tmp_path, tiny_qwen_1k_dir, cache_dir):
    sample_data(tmp_path, 8)
    args = ["--data_path", tmp_path / "data.jsonl", "--model_name", tiny_qwen_1k_dir, "--cache_dir", cache_dir,
            "--output_dir", tmp_path / "out", "--device", "cpu"]
    assert_error(cli(*args, "--load_in_4bit"), r"--load_in_4bit trains adapters on a frozen 4-bit model: add --lora",
                 2)
    assert_error(cli(*args, "--lora", "--load_in_4bit"), r"--load_in_4bit \(QLoRA\) needs a CUDA GPU", 2)


def test_lora_without_lr_trains_at_the_lora_rate_and_says_why(tmp_path):
    from core.config import LORA_LR, parse_args
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("lr: 3.0e-5\n")
    assert parse_args(["--data_path", "x", "--lora"]).lr == LORA_LR
    assert parse_args(["--data_path", "x", "--lora", "--lr", "1e-5"]).lr == 1e-5
    assert parse_args(["--data_path", "x", "--lora", "--config", str(yaml_file)]).lr == 3e-5
    assert parse_args(["--data_path", "x"]).lr == 2e-5  # a full fine-tune keeps its documented default
