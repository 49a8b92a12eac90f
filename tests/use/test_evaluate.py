"""`train.py evaluate`: validation's loss on packed batches, progress, whole files only, and self-play."""

import json

import numpy as np
import pytest
from conftest import ROOT, cli, sample_data, write_jsonl

from core.config import parse_args
from core.data.tokenized import split_records
from core.train.run_setup import setup
from core.train.step import validate


def test_evaluate_loss_is_the_validation_loss_of_the_same_records(tmp_path, tiny_qwen_1k_dir, cache_dir):
    data = sample_data(tmp_path, 16)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    run = setup(parse_args(["--data_path", str(data), "--model_name", str(tiny_qwen_1k_dir),
                            "--cache_dir", str(cache_dir), "--output_dir", str(tmp_path / "run"),
                            "--eval_split", "0.5", "--sample_prompts", "0"]),
                log=lambda *_: None)
    expected = validate(run)["eval_loss"]
    held_out = write_jsonl(tmp_path / "held_out.jsonl",
                           [r for r, held in zip(records, split_records(16, 0.5, 42)) if held])
    output = tmp_path / "eval.jsonl"
    code, printed = cli("evaluate", "--model", tiny_qwen_1k_dir, "--data_path", held_out, "--cache_dir", cache_dir,
                        "--output", output, "--no-replies", "--batch_size", "3")
    assert code == 0, printed[-2000:]
    summary = json.loads(output.with_suffix(".summary.json").read_text())
    assert summary["mean_loss"] == pytest.approx(expected, abs=1e-5)
    assert "loss: 100%" in printed and "sequences/s" in printed  # the progress line


def test_an_interrupted_evaluate_leaves_the_earlier_output_whole(tmp_path, tiny_qwen_1k_dir, cache_dir, monkeypatch):
    import core.use.evaluate as evaluate
    data = sample_data(tmp_path, 4)
    output = tmp_path / "eval.jsonl"
    earlier = '{"where": "an earlier evaluation", "loss": 1.0}\n'
    output.write_text(earlier)
    calls = []

    def interrupted(loss):
        calls.append(loss)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return float(np.exp(loss))
    monkeypatch.setattr(evaluate, "perplexity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(parse_args(["--model", str(tiny_qwen_1k_dir), "--data_path", str(data), "--cache_dir",
                                      str(cache_dir), "--output", str(output), "--no-replies"],
                                     evaluate.EvaluateConfig))
    assert output.read_text() == earlier and sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl",
                                                                                              "eval.jsonl"]


def test_self_play_answers_in_its_own_running_context_with_metrics_per_turn(tmp_path, tiny_qwen_1k_dir, cache_dir,
                                                                            monkeypatch):
    import core.use.backend
    lines = (ROOT / "data" / "roleplay_conversations.jsonl").read_text().splitlines()[:3]
    conversations = write_jsonl(tmp_path / "held_out.jsonl", [json.loads(line) for line in lines])
    seen = []

    def fake_replies(model, tokenizer, chats, sampling, batch_size):
        seen.extend(chats)
        return [f"Bot reply {len(chat)}. We are fine." for chat in chats]
    monkeypatch.setattr(core.use.backend, "generate_replies", fake_replies)  # self-play's replies come from the backend
    output = tmp_path / "play.jsonl"
    code, printed = cli("evaluate", "--model", tiny_qwen_1k_dir, "--conversations", conversations, "--output", output,
                        "--cache_dir", cache_dir, "--batch_size", "2")
    assert code == 0, printed[-2000:]
    played = [json.loads(line) for line in output.read_text().splitlines()]
    users = [[m for m in json.loads(line)["messages"] if m["role"] == "user"] for line in lines]
    assert [len(p["turns"]) for p in played] == [len(u) for u in users]
    later = [chat for chat in seen if len(chat) > 3]
    # the history the bot sees holds its own earlier replies, never the reference ones
    assert later and all(m["content"].startswith("Bot reply") for chat in later for m in chat
                         if m["role"] == "assistant")
    assert played[0]["turns"][1]["metrics"]["repeated_from_earlier"] == 1  # "We are fine." again
    summary = json.loads(output.with_suffix(".summary.json").read_text())
    assert set(summary["per_turn"]) == {str(n) for n in range(1, max(map(len, users)) + 1)}
    assert summary["per_turn"]["2"]["repeated_from_earlier_share"] == 1.0
    assert printed.count("\n   1 ") == 1 and "rep.earlier" in printed and "Role judge (naive Bayes" in printed
    scenarios = summary["per_scenario"]  # each conversation as one call: "We are fine." repeats from turn 2 on
    assert [s["repetition"] for s in scenarios] == pytest.approx([(len(u) - 1) / len(u) for u in users])
    assert all(s["mean_words"] == 6 and 0 <= s["role_inversion"] <= 1 for s in scenarios)
    assert all(s["reward"] == pytest.approx(sum(s["components"].values())) for s in scenarios)
    assert all(s["components"]["no_repetition"] == pytest.approx(1 - s["repetition"]) for s in scenarios)
    assert "scenario   inversion" in printed
