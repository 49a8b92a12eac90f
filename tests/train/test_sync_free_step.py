"""Whole optimizer steps of the CUDA code path, run on the CPU through `train_step` and the loop's per-step code:
nothing waits for the device in a step that does not log, one read in a step that does, and a non-finite step's
update is skipped on the device (fused AdamW's `found_inf`) and counted when the figures are read."""

from __future__ import annotations

import json

import pytest
import test_gpu_ready
import torch
from conftest import make_run
from test_gpu_ready import Counter, cuda_path

from core.train.run_log import RunLog
from core.train.run_setup import setup_optimization
from core.train.step import train_batches, train_step
from core.trainer import after_step

host_reads = test_gpu_ready.host_reads  # the fixture


@pytest.fixture
def cuda_run(tmp_path, tiny_qwen_1k_dir, cache_dir):
    """A run whose model is prepared as on a GPU (SDPA packed attention, no lean CPU layers), with its optimizer."""
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log_steps=2, eval_steps=0, save_steps=0, batch_size=2)
    run.prepared = cuda_path(tiny_qwen_1k_dir)
    run.optim = setup_optimization(run.prepared.model, run.config, run.plan.lr, run.optim.total_steps,
                                   run.prepared.device, torch.float32, run.dist)
    assert all(group["fused"] for group in run.optim.optimizer.param_groups)
    return run


def one_step(run, run_log, batches, host_reads) -> tuple[int, list[str]]:
    """One step as `fit` runs it; the device-to-host syncs and host reads it made."""
    state = run.state
    group = batches[state.batch_in_epoch: state.batch_in_epoch + 1]
    counter = Counter()
    host_reads["calls"].clear()
    host_reads["on"] = True
    with counter:
        result = train_step(run, group)
        state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
        run_log.step_done(run.optim.scheduler.get_last_lr()[0], result.real_tokens)
        after_step(run, run_log, result)
    host_reads["on"] = False
    return counter.syncs + len(host_reads["calls"]), host_reads["calls"][:]


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_step_that_does_not_log_waits_for_nothing_and_one_that_logs_reads_once(cuda_run, host_reads, tmp_path):
    run, log_file = cuda_run, tmp_path / "metrics.jsonl"
    batches = train_batches(run, 0)
    before = {n: p.detach().clone() for n, p in run.prepared.model.named_parameters()}
    with RunLog(log_file, run.optim.total_steps, 0, log=lambda *_: None) as run_log:
        assert one_step(run, run_log, batches, host_reads) == (0, [])
        assert run.unread and not log_file.read_text()  # the figures are still on the device
        syncs, calls = one_step(run, run_log, batches, host_reads)
        assert syncs <= 1 and calls == ["tolist"]  # the two steps' figures in one transfer
    (line,) = metrics(log_file)
    assert line["type"] == "train" and line["step"] == 2 and line["loss"] > 0 and line["grad_norm"] > 0
    assert not run.unread and run.state.bad_steps_total == 0
    assert any(not torch.equal(p, before[n]) for n, p in run.prepared.model.named_parameters())


def test_a_non_finite_step_is_skipped_on_the_device_and_counted_when_read(cuda_run, host_reads, tmp_path):
    run, log_file = cuda_run, tmp_path / "metrics.jsonl"
    batches = train_batches(run, 0)
    optimizer = run.optim.optimizer
    poison = {"on": False}
    run.prepared.model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: output * float("nan") if poison["on"] else output)
    with RunLog(log_file, run.optim.total_steps, 0, log=lambda *_: None) as run_log:
        one_step(run, run_log, batches, host_reads)
        one_step(run, run_log, batches, host_reads)  # a logging step: read
        params = {n: p.detach().clone() for n, p in run.prepared.model.named_parameters()}
        optim_state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        poison["on"] = True
        assert one_step(run, run_log, batches, host_reads) == (0, [])  # skipped without a look at the loss
        poison["on"] = False
        assert all(torch.equal(p, params[n]) for n, p in run.prepared.model.named_parameters())
        assert all(torch.equal(v, optim_state[id(p)][k]) for p, s in optimizer.state.items() for k, v in s.items())
        assert run.state.bad_steps_total == 0  # not read yet
        one_step(run, run_log, batches, host_reads)  # logs: steps 3 and 4 are read, in order
    assert run.state.bad_steps_total == 1 and run.state.bad_steps_in_row == 0
    assert [(e["type"], e["step"]) for e in metrics(log_file)] == [("train", 2), ("skipped", 3), ("train", 4)]
    assert metrics(log_file)[2]["loss"] > 0  # the window's loss leaves the skipped step out
    assert all(s["step"].item() == 3 for s in optimizer.state.values())  # the skipped step did not count
