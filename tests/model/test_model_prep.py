"""The model-preparation step: what it changes is listed and logged, and importing the package changes nothing."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, make_run

from core.errors import ConfigError
from core.model.patches.packed_attention import ATTENTION
from core.model.prepare import PATCHES


def test_prepare_model_applies_and_logs_each_cpu_patch(tmp_path, tiny_qwen_1k_dir, cache_dir):
    messages = []
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log=messages.append, device="cpu")
    patches = run.prepared.patches
    assert [p.split(":")[0].split(" on ")[0] for p in patches] == [
        "lean RMSNorm/SwiGLU", "packed attention", "selective head", "last layer"]
    assert patches[0] == "lean RMSNorm/SwiGLU on 7 modules (cpu)"  # 2 norms + 1 MLP per layer, the final norm
    model_lines = [m for m in messages if m.startswith("Model: ")]
    assert len(model_lines) == 1 and all(p in model_lines[0] for p in patches)
    model = run.prepared.model
    assert model.config._attn_implementation == ATTENTION
    assert run.prepared.packed and run.prepared.selective and run.prepared.loss_module.model is model



def test_every_patch_of_the_table_is_applied_or_skipped_with_its_reason(tmp_path, tiny_qwen_1k_dir, cache_dir):
    messages = []
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log=messages.append, device="cpu", lora=True, lora_r=4)
    prepared = run.prepared
    applied = {patch.name for patch in PATCHES} - set(prepared.skipped)
    assert applied == {"LoRA", "lean layers", "packing", "selective head", "trimmed last layer"}
    assert len(prepared.patches) == len(applied)  # one log entry per applied patch
    assert prepared.skipped == {"gradient checkpointing": "not asked for (--gradient_checkpointing)",
                                "compile": "not asked for (--compile)",
                                "Liger kernels": "not asked for (--liger auto: Liger's kernels need CUDA (the device "
                                                 "is cpu))"}
    (model_line,) = [m for m in messages if m.startswith("Model: ")]
    assert model_line == "Model: " + "; ".join(prepared.patches)


def test_the_model_line_of_a_cpu_run_is_unchanged(tmp_path, tiny_qwen_1k_dir, cache_dir):
    messages = []
    make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log=messages.append, device="cpu")
    # As before the patch table, except that the packed attention names its backend and why (issue 25).
    assert "Model: lean RMSNorm/SwiGLU on 7 modules (cpu); packed attention: eager, causal SDPA per sequence (auto " \
           "on cpu: the fastest there when not compiled, by bench/attention_cpu.py); selective head: logits at " \
           "trained positions only, 2048 rows at a time; last layer: MLP on trained rows only" in messages
    assert not [m for m in messages if m.startswith("Note: ")]

def test_a_head_the_selective_loss_cannot_take_is_logged_and_compile_is_refused(tmp_path, tiny_qwen_1k_dir, cache_dir):
    model_dir = tmp_path / "softcapped"
    shutil.copytree(tiny_qwen_1k_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    messages = []
    run = make_run(tmp_path, model_dir, cache_dir, log=messages.append, gradient_checkpointing=True)
    assert not run.prepared.selective and "gradient checkpointing" in run.prepared.patches
    assert "Note: selective head is off: the model soft-caps its logits; the loss takes the model's full logits" \
        in messages
    with pytest.raises(ConfigError, match=r"--compile compiles the decoder body .*soft-caps its logits"):
        make_run(tmp_path, model_dir, cache_dir, compile=True, output_dir=str(tmp_path / "out2"))


IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
import core

def snapshot():
    return {"environ": dict(os.environ), "attention": sorted(AttentionInterface._global_mapping),
            "masks": sorted(AttentionMaskInterface._global_mapping)}

before = snapshot()
modules = [m.name for m in pkgutil.walk_packages(core.__path__, "core.")
           if not m.name.startswith("core.store.migrations.")]  # Alembic runs these scripts, nothing imports them
for name in modules:
    importlib.import_module(name)
print(json.dumps({"modules": modules, "same": snapshot() == before}))
"""


def test_importing_every_core_module_changes_no_environment_and_no_registry():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"core.model.prepare", "core.model.patches.packed_attention", "core.trainer", "core.cli"}
    assert expected <= set(report["modules"])
    assert report["same"]
