"""The training loop on the tiny Qwen2 model: accumulation, split, loss, batching, outputs on disk."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, make_run
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.data.batching import BatchSize, collate, epoch_batches, pack
from core.data.tokenized import split_records
from core.model.patches.last_layer import is_trimmed, trim_last_layer
from core.model.patches.lean_layers import make_lean
from core.model.patches.packed_attention import ATTENTION
from core.model.patches.selective_head import summed_loss, summed_loss_full_logits
from core.train.step import accumulate_gradients
from core.trainer import fit


def gradients(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_equals_one_large_batch(tmp_path, tiny_qwen_1k_dir, cache_dir):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir)
    idx = run.data.train_idx[:6]
    lengths = run.data.sequences.lengths[idx]
    assert len(set(lengths.tolist())) > 1  # micro-batches of different lengths and token counts
    accumulate_gradients(run, [idx[:1], idx[1:4], idx[4:]])
    accumulated = gradients(run.prepared.model)
    run.prepared.model.zero_grad(set_to_none=True)
    accumulate_gradients(run, [idx])
    single = gradients(run.prepared.model)
    for name, grad in single.items():
        rel = (accumulated[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert rel < 1e-4, name


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, tiny_qwen_1k_dir, cache_dir):
    results = []
    for checkpointing in (False, True):
        run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, gradient_checkpointing=checkpointing,
                       output_dir=str(tmp_path / f"out-{checkpointing}"))
        assert run.prepared.model.is_activation_checkpointing == checkpointing
        results.append((accumulate_gradients(run, [run.data.train_idx[:4]]), gradients(run.prepared.model)))
    (plain_step, plain), (checkpointed_step, checkpointed) = results
    assert plain_step.loss == checkpointed_step.loss
    for name, grad in plain.items():
        assert (checkpointed[name] - grad).norm() / grad.norm().clamp_min(1e-12) < 1e-5, name


@pytest.mark.slow(seconds=30)  # compiling the body takes Inductor half a minute
def test_compiled_body_gives_the_same_loss_and_gradients(tmp_path, tiny_qwen_1k_dir, cache_dir):
    results = []
    for compiled in (False, True):
        run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, compile=compiled,
                       output_dir=str(tmp_path / f"out-{compiled}"))
        assert ("torch.compile of the decoder body" in run.prepared.patches) == compiled
        assert (run.prepared.model.get_decoder()._compiled_call_impl is not None) == compiled
        results.append((accumulate_gradients(run, [run.data.train_idx[:4]]), gradients(run.prepared.model)))
    (plain_step, plain), (compiled_step, compiled_grads) = results
    assert abs(plain_step.loss - compiled_step.loss) / plain_step.loss < 1e-5
    assert (plain_step.count, plain_step.real_tokens) == (compiled_step.count, compiled_step.real_tokens)
    for name, grad in plain.items():
        assert (compiled_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12) < 1e-4, name


def test_split_is_deterministic_and_seeded():
    a, b = split_records(100, 0.1, 42), split_records(100, 0.1, 42)
    assert (a == b).all() and a.sum() == 10
    assert not (a == split_records(100, 0.1, 43)).all()
    assert split_records(5, 0.1, 0).sum() == 1  # at least one held out when asked for


def test_selective_logits_loss_equals_full_logits(tiny_qwen_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(0, 5000, (3, 40))
    labels = ids.clone()
    labels[:, :15] = -100
    labels[1, 30:] = -100
    selective = summed_loss(model, {"input_ids": ids}, labels, chunk_size=7)
    (selective / 3).backward(retain_graph=True)  # a scaled loss, as the trainer's mean over tokens
    grads = gradients(model)
    with pytest.raises(RuntimeError, match="back-propagated twice"):
        selective.backward()  # its gradients were computed once, in the forward pass, and are used up
    model.zero_grad(set_to_none=True)
    full = summed_loss_full_logits(model, {"input_ids": ids}, labels)
    (full / 3).backward()
    assert abs(selective.item() - full.item()) / full.item() < 1e-5
    for name, grad in gradients(model).items():
        assert (grads[name] - grad).norm() / grad.norm().clamp_min(1e-12) < 1e-4, name


def tiny_llama(vocab: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_trimmed_last_layer_gives_the_same_loss_and_gradients_on_trained_rows_only(tiny_qwen_dir, family):
    """The last layer's MLP sees only the rows that predict a trained token; loss and gradients are unchanged."""
    def load():
        return (AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32) if family == "qwen2"
                else tiny_llama(5000))
    stock, trimmed = load(), load()
    assert not is_trimmed(stock) and trim_last_layer(trimmed) and is_trimmed(trimmed)
    mlp_rows = []
    trimmed.model.layers[-1].mlp.register_forward_hook(lambda m, args, out: mlp_rows.append(args[0].shape[:-1]))
    ids = torch.randint(0, 5000, (3, 40), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :15] = -100
    labels[1, 30:] = -100
    results = []
    for model in (stock, trimmed):
        loss = summed_loss(model, {"input_ids": ids}, labels, chunk_size=7)
        loss.backward()
        results.append((loss.item(), gradients(model)))
    (stock_loss, stock_grads), (trimmed_loss, trimmed_grads) = results
    assert mlp_rows == [(int((labels[:, 1:] != -100).sum()),)]  # 2 * 25 + 15 rows, not 3 * 40
    assert abs(trimmed_loss - stock_loss) / stock_loss < 1e-6
    for name, grad in stock_grads.items():
        assert (trimmed_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12) < 1e-5, name
    with torch.no_grad():  # without trained rows (generation, the full-logits path) it is the stock layer
        assert torch.equal(trimmed(input_ids=ids).logits, stock(input_ids=ids).logits)


def test_padded_batch_loss_equals_sum_of_examples_alone(tmp_path, tiny_qwen_1k_dir, cache_dir):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, packing=False)
    assert not run.prepared.packed
    batch = run.data.train_idx[:4]
    inputs, labels = collate(run.data.sequences, batch, run.tokenizer.pad_token_id)
    assert (labels == -100).any() and len(set(run.data.sequences.lengths[batch].tolist())) > 1
    model = run.prepared.model
    with torch.no_grad():
        together = summed_loss(model, inputs, labels).item()
        alone = sum(summed_loss(model, *collate(run.data.sequences, batch[i:i + 1], 0)).item() for i in range(4))
    assert abs(together - alone) / alone < 1e-5


def test_packed_batch_loss_and_gradients_equal_sum_of_examples_alone(tmp_path, tiny_qwen_1k_dir, cache_dir):
    """One packed row through the training model (packed attention, lean layers) against each example
    alone through a stock transformers model with SDPA: same loss, same gradients, so nothing crosses
    a sequence boundary."""
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir)
    model = run.prepared.model
    assert run.prepared.packed and model.config._attn_implementation == ATTENTION and is_trimmed(model)
    batch = run.data.train_idx[:4]
    inputs, labels = pack(run.data.sequences, batch)
    assert inputs["input_ids"].shape == (1, run.data.sequences.lengths[batch].sum())
    assert len(set(run.data.sequences.lengths[batch].tolist())) > 1
    together = summed_loss(run.prepared.model, inputs, labels)
    together.backward()
    packed_grads = gradients(run.prepared.model)

    stock = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir, dtype=torch.float32, attn_implementation="sdpa")
    alone = sum(summed_loss_full_logits(stock, *collate(run.data.sequences, batch[i:i + 1], 0)) for i in range(4))
    alone.backward()
    assert abs(together.item() - alone.item()) / alone.item() < 1e-5
    stock_grads = gradients(stock)
    for name, grad in packed_grads.items():
        assert (stock_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12) < 1e-4, name


def test_a_model_that_cannot_pack_trains_on_padded_batches_and_says_why(tmp_path, tiny_qwen_1k_dir, cache_dir):
    model_dir = tmp_path / "windowed"
    shutil.copytree(tiny_qwen_1k_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=16, max_window_layers=0)
    (model_dir / "config.json").write_text(json.dumps(config))
    messages = []
    run = make_run(tmp_path, model_dir, cache_dir, log=messages.append)
    assert not run.prepared.packed and run.prepared.model.config._attn_implementation == "sdpa"
    assert any("packing is off" in m and "sliding attention window (16)" in m for m in messages)
    step = accumulate_gradients(run, [run.data.train_idx[:4]])
    assert math.isfinite(step.loss) and step.count > 0
    assert step.real_tokens == run.data.sequences.lengths[run.data.train_idx[:4]].sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_layers_match_stock_layers(tiny_qwen_dir, dtype):
    """The lean RMSNorm and SwiGLU give the stock outputs and gradients, also under bf16 autocast."""
    stock = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32)
    lean = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32)
    assert make_lean(lean) == 2 * 3 + 1  # two norms and an MLP per layer, and the final norm
    ids = torch.randint(0, 5000, (2, 33), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (stock, lean):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = model(input_ids=ids).logits.float()
        (logits.square().mean()).backward()
        results.append((logits.detach(), gradients(model)))
    (stock_logits, stock_grads), (lean_logits, lean_grads) = results
    assert (lean_logits - stock_logits).norm() / stock_logits.norm() < 1e-6
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2  # bf16 rounds the reordered backward differently
    for name, grad in stock_grads.items():
        assert (lean_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12) < tolerance, name


def test_packed_rows_restart_positions_and_never_train_across_a_boundary(tmp_path, tiny_qwen_1k_dir, cache_dir):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir)
    batch = run.data.train_idx[:3]
    inputs, labels = pack(run.data.sequences, batch)
    starts = inputs["cu_seq_lens_q"][:-1].tolist()
    assert inputs["cu_seq_lens_q"][-1] == inputs["input_ids"].shape[1]
    assert (inputs["position_ids"][0, starts] == 0).all() and (labels[0, starts] == -100).all()
    for row, (start, end) in zip(batch, zip(starts, inputs["cu_seq_lens_q"][1:].tolist())):
        ids, trained = run.data.sequences.sequence(int(row))
        assert inputs["input_ids"][0, start:end].tolist() == list(ids)
        assert (labels[0, start:end] != -100).tolist() == [False] + list(trained)[1:]


def test_length_grouped_batches_cover_each_example_once_and_are_seeded():
    lengths = np.random.default_rng(0).integers(10, 500, size=1000)
    indices = np.arange(1000)
    grouped = BatchSize(4, padded=True, group_batches=64)
    batches = epoch_batches(indices, lengths, grouped, seed=1, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = epoch_batches(indices, lengths, grouped, seed=1, epoch=0)
    assert all((x == y).all() for x, y in zip(batches, again))
    assert not all((x == y).all() for x, y in zip(batches, epoch_batches(indices, lengths, grouped, seed=1, epoch=1)))
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches) / lengths.sum()
    assert padding < 0.05
    shuffled = epoch_batches(indices, lengths, BatchSize(4), seed=1, epoch=0)  # for packed rows
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(1000))
    assert all((x == y).all() for x, y in zip(shuffled, epoch_batches(indices, lengths, BatchSize(4), 1, 0)))


@pytest.mark.parametrize("padded", [False, True], ids=["packed", "padded"])
def test_token_budget_batches_hold_each_sequence_once_whole_and_within_budget(padded):
    lengths = np.random.default_rng(0).integers(10, 500, size=1000)
    indices = np.arange(1000)
    size = BatchSize(4, tokens=1200, processes=3, padded=padded, group_batches=8 if padded else 0)
    batches = epoch_batches(indices, lengths, size, seed=1, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))  # each sequence once, none split
    same = epoch_batches(indices, lengths, size, seed=1, epoch=0)
    assert len(same) == len(batches) and all(np.array_equal(x, y) for x, y in zip(batches, same))
    assert not all(np.array_equal(x, y) for x, y in zip(batches, epoch_batches(indices, lengths, size, 1, epoch=1)))
    parts = [part for batch in batches for part in size.split(batch, lengths)]
    assert all(len(size.split(batch, lengths)) == 3 for batch in batches)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))  # the processes' shares are disjoint
    cost = [len(p) * lengths[p].max() if padded else lengths[p].sum() for p in parts if len(p)]
    assert max(cost) <= 1200 and np.mean(cost) > 0.7 * 1200  # within the budget, and well filled
    assert sum(not len(p) for p in parts) <= len(batches) / 10  # only a group's last global batch runs short


def test_every_output_directory_loads_with_transformers(tmp_path, tiny_qwen_1k_dir, cache_dir):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, epochs=2, save_steps=3)
    summary = fit(run, log=lambda *_: None)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert {"best_model", "epoch_1", "epoch_2", "checkpoint-3", "checkpoint-6", "metrics.jsonl",
            "train_config.json"} <= set(names)
    for name in ["best_model", "epoch_1", "epoch_2", "checkpoint-3", "checkpoint-6"]:
        model = AutoModelForCausalLM.from_pretrained(out / name)
        tokenizer = AutoTokenizer.from_pretrained(out / name)
        assert (out / name / "model.safetensors").is_file()
        assert tokenizer.chat_template == run.tokenizer.chat_template
        assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in entries if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [summary["steps"] // 2, summary["steps"]]
    assert all(e["eval_ppl"] == pytest.approx(np.exp(e["eval_loss"])) for e in evals)
    assert [e["step"] for e in entries if e["type"] == "train"] == list(range(2, summary["steps"] + 1, 2))
    best = json.loads((out / "best_model" / "best.json").read_text())
    assert best["eval_loss"] == min(e["eval_loss"] for e in evals)
    assert json.loads((out / "train_config.json").read_text())["batch_size"] == 4


REUSE_PROBE = """
import resource, torch
from core.utils import retain_freed_memory

def faults_of_64mb_tensors(n=3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(16 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

fresh = faults_of_64mb_tensors()
assert retain_freed_memory()
faults_of_64mb_tensors(10)  # the heap settles at its high-water mark, as in a run's first steps
print(fresh, faults_of_64mb_tensors())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_page_faults():
    """Each 64 MB tensor is a fresh mmap faulted in page by page, until retain_freed_memory() keeps the heap."""
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}  # count 4 KB pages
    result = subprocess.run([sys.executable, "-c", REUSE_PROBE], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    fresh, retained = map(int, result.stdout.split())
    assert fresh > 3 * 16_000  # 64 MB is 16,384 pages, each faulted in, three times
    assert retained < 100


def test_setup_says_when_freed_memory_cannot_be_kept(tmp_path, tiny_qwen_1k_dir, cache_dir, monkeypatch):
    monkeypatch.setattr("core.train.run_setup.retain_freed_memory", lambda: False)  # as on macOS or musl
    messages = []
    make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log=messages.append, device="cpu")
    assert any("refused to keep freed memory" in m for m in messages)
