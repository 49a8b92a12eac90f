"""Batches built ahead on a background thread (core/train/prefetch.py): the same batches in the same order as built
step by step, failures raised in the loop with their traceback, and the thread joined however the loop ends."""

from __future__ import annotations

import threading
import time
import traceback

import pytest
import torch
from conftest import make_run

from core.train.prefetch import Prefetcher
from core.train.step import step_batches, train_batches
from core.trainer import fit

CPU = torch.device("cpu")


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batch-prefetch"]


def test_the_loop_trains_the_batches_built_ahead_in_the_order_it_would_build_them(tmp_path, tiny_qwen_1k_dir,
                                                                                    cache_dir):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, epochs=2, batch_size=2, grad_accum_steps=2, max_steps=7,
                   eval_split=0.0)
    built_on, trained, loss = [], [], run.objective.loss
    build = run.objective.batch

    def recording_batch(r, units):
        built_on.append(threading.current_thread().name)
        return build(r, units)

    def recording_loss(r, batch):
        trained.append(batch.inputs["input_ids"].clone())
        return loss(r, batch)
    run.objective.batch, run.objective.loss = recording_batch, recording_loss
    fit(run, log=lambda *_: None)

    run.objective.batch = build  # step by step, as the loop built them before: each group when its step comes
    expected, steps = [], 0
    for epoch in range(2):
        batches = train_batches(run, epoch)
        for start in range(0, len(batches), 2):
            if steps < 7:
                expected += [b.inputs["input_ids"] for b, _ in step_batches(run, batches[start:start + 2])]
                steps += 1
    assert len(trained) == len(expected) == 14  # 7 steps of 2 micro-batches, across the epoch boundary
    assert all(torch.equal(a, b) for a, b in zip(trained, expected))
    assert set(built_on) == {"batch-prefetch"} and not prefetch_threads()


def test_a_failure_while_building_a_batch_is_raised_in_the_loop_with_its_traceback(tmp_path, tiny_qwen_1k_dir,
                                                                                    cache_dir):
    run = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, batch_size=2, eval_split=0.0)
    build, calls = run.objective.batch, []

    def broken_record(r, units):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("record 7 cannot be packed")
        return build(r, units)
    run.objective.batch = broken_record
    with pytest.raises(ValueError, match="record 7 cannot be packed") as raised:
        fit(run, log=lambda *_: None)
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert "fit" in frames and "broken_record" in frames  # raised in the loop, traceback from the thread
    assert run.state.step == 2 and not prefetch_threads()


def test_items_come_in_order_and_closing_early_joins_the_thread():
    with Prefetcher(lambda i: i * i, range(50), CPU) as ahead:
        assert list(ahead) == [(i, i * i) for i in range(50)]
        with pytest.raises(StopIteration):
            next(ahead)
    built = []

    def slow(i):
        built.append(i)
        time.sleep(0.01)
        return i
    started = time.perf_counter()
    with Prefetcher(slow, range(10_000), CPU, ahead=2) as ahead:
        assert next(ahead) == (0, 0)
    assert not prefetch_threads() and time.perf_counter() - started < 5
    assert len(built) <= 5  # it stayed at most `ahead` items ahead of the one taken
