"""--lr auto (core/train/lr_search.py): bounded, seeded, reported, then exactly the chosen rate's run."""

from __future__ import annotations

import json

import pytest
from conftest import assert_error, cli, make_config, make_run, sample_data
from safetensors.torch import load_file

from core.train import lr_search
from core.trainer import fit
from core.use.report import write_report

# 18 training records one at a time for 3 epochs: 54 steps, so that 15% of them give each rate 2 steps.
OPTIONS = dict(batch_size=1, epochs=3, log_steps=1)


def run_lines(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def train(tmp_path, model_dir, cache_dir, **overrides):
    lines = []
    run = make_run(tmp_path, model_dir, cache_dir, log=lines.append, **{**OPTIONS, **overrides})
    fit(run, log=lines.append)
    return run, lines


def test_lr_auto_stays_within_its_bound_and_then_trains_exactly_as_the_chosen_rate(tmp_path, tiny_qwen_1k_dir,
                                                                                    cache_dir, monkeypatch):
    steps = []
    counted = lr_search.train_step
    monkeypatch.setattr(lr_search, "train_step", lambda run, group: steps.append(len(group)) or counted(run, group))
    auto_dir, fixed_dir = tmp_path / "auto", tmp_path / "fixed"
    auto_dir.mkdir(), fixed_dir.mkdir()
    run, lines = train(auto_dir, tiny_qwen_1k_dir, cache_dir, lr="auto")
    search = next(m for m in run_lines(auto_dir / "out") if m["type"] == "lr_search")
    chosen = search["chosen_lr"]

    assert len(steps) == search["search_steps"] == 4 * search["steps_per_rate"] == 8
    assert search["search_steps"] <= 0.15 * search["run_steps"] and search["run_steps"] == 54
    plan = next(line for line in lines if "--lr auto will try" in line)
    assert "8 steps, 14.8% of the run's 54 (bound: 15%, 8 steps)" in plan, plan
    assert any(f"Learning rate: {chosen:.3g}, chosen by --lr auto" in line for line in lines)
    assert chosen == search["rates"][min(range(4), key=lambda i: search["eval_losses"][i])]
    saved = json.loads((auto_dir / "out" / "best_model" / "train_config.json").read_text())
    assert saved["lr"] == "auto" and saved["plan"]["lr"] == chosen == run.plan.lr  # the request, and its plan
    report = write_report(auto_dir / "out").read_text()
    assert "Learning rate: --lr auto" in report and "chosen" in report

    train(fixed_dir, tiny_qwen_1k_dir, cache_dir, lr=chosen)
    losses = [[(m["type"], m["step"], m.get("loss"), m.get("eval_loss")) for m in run_lines(d / "out")
               if m["type"] in ("train", "eval")] for d in (auto_dir, fixed_dir)]
    assert losses[0] == losses[1] and len(losses[0]) > 50
    weights = [load_file(d / "out" / "best_model" / "model.safetensors") for d in (auto_dir, fixed_dir)]
    assert all(weights[0][name].equal(weights[1][name]) for name in weights[1])


def test_the_search_is_deterministic_with_the_seed_and_not_repeated_on_resume(tmp_path, tiny_qwen_1k_dir, cache_dir):
    first = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, lr="auto", save_steps=20, **OPTIONS)
    again = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, lr="auto", save_steps=20, overwrite_output_dir=True,
                     **OPTIONS)
    assert first.lr_search["eval_losses"] == again.lr_search["eval_losses"]
    assert first.plan.lr == again.plan.lr == first.lr_search["chosen_lr"]

    fit(again, log=lambda *_: None)
    lines = []
    resumed = make_run(tmp_path, tiny_qwen_1k_dir, cache_dir, log=lines.append, lr="auto", save_steps=20,
                       resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-20"), **OPTIONS)
    assert resumed.lr_search is None and resumed.plan.lr == first.plan.lr and resumed.config.lr == "auto"
    assert any("chosen by --lr auto when this run started" in line and "not searched again" in line for line in lines)


def test_lr_auto_needs_a_validation_split_and_enough_steps(tmp_path, tiny_qwen_1k_dir, cache_dir):
    data = sample_data(tmp_path)
    common = ["--data_path", data, "--model_name", tiny_qwen_1k_dir, "--cache_dir", cache_dir, "--epochs", "1"]
    assert_error(cli(*common, "--lr", "auto", "--eval_split", "0", "--output_dir", tmp_path / "a"),
                 r"--lr auto .*needs a validation split", 2)
    assert_error(cli(*common, "--lr", "fast", "--output_dir", tmp_path / "b"), r"--lr: invalid float or auto value", 2)
    assert_error(cli(*common, "--lr", "auto", "--output_dir", tmp_path / "c"),
                 r"--lr auto: this run has 6 optimizer steps, too few .*needs 27", 2)


@pytest.mark.parametrize("lora, center", [(False, 2e-5), (True, 2e-4)])
def test_the_rates_tried_surround_the_default_of_the_run_kind(tmp_path, tiny_qwen_1k_dir, cache_dir, lora, center):
    plan = lr_search.plan_search(make_config(tmp_path, tiny_qwen_1k_dir, cache_dir, lr="auto", lora=lora), 200, 60)
    assert min(plan.rates) < center < max(plan.rates) and center in plan.rates
    assert plan.steps == 7 and plan.search_steps <= 0.15 * 200
