"""`train.py inspect` on a small file whose numbers are counted by hand."""

import subprocess
import sys

from conftest import ROOT, write_jsonl

from core.config import FormatOptions, parse_args
from core.data.statistics import data_statistics
from core.data.tokenized import tokenize_file
from core.use.inspect import InspectConfig

PITCH = "Our platform cuts route planning time in half for fleets like yours. " * 8
RECORDS = [
    {"input": "Hello, is this Maria?", "output": "Go away."},
    {"input": "Hello, is this Maria?", "output": "Go away."},                      # duplicate of line 1
    {"messages": [{"role": "system", "content": "You are Tom."},
                  {"role": "user", "content": "Hi Tom."},
                  {"role": "assistant", "content": "Who is this?"},
                  {"role": "user", "content": "Sam from Acme."},
                  {"role": "assistant", "content": "Not interested."}]},
    {"conversations": [{"from": "human", "value": "Got a minute?"}, {"from": "gpt", "value": "No."}]},
    {"input": PITCH, "output": "ok"},                                               # over --max_length 64
]
REPLIES = ["Go away.", "Go away.", "Who is this?", "Not interested.", "No.", "ok"]


def test_statistics_match_a_hand_count(tmp_path, tiny_qwen_dir, cache_dir, qwen_tokenizer):
    path = write_jsonl(tmp_path / "hand.jsonl", RECORDS)
    data = tokenize_file(path, qwen_tokenizer, FormatOptions(), 64, cache_dir, progress=False)
    stats = data_statistics(data, eval_split=0.4, seed=1)
    assert stats["records"] == 5 and stats["sequences"] == 5
    assert stats["formats"] == {"input/output": 3, "messages": 1, "sharegpt": 1}
    assert stats["multi_turn_records"] == 1
    assert stats["messages_by_role"] == {"user": 6, "assistant": 6, "system": 1}
    assert stats["duplicate_records"] == 1
    assert stats["train_records"] == 3 and stats["eval_records"] == 2
    # seed 1 holds out records 0 and 4 (counted from 0): the duplicate pair (0, 1) straddles the split.
    assert stats["records_in_both_splits"] == 2
    assert stats["over_max_length"] == 1 and stats["replies_cut"] == 0
    # Trained tokens: each reply plus its <|im_end|>.
    expected_trained = sum(len(qwen_tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in REPLIES)
    assert stats["trained_tokens"] == expected_trained
    lengths = []  # the template's rendering, less the newline it writes after the last <|im_end|>
    for record in RECORDS[:4]:
        chat = record.get("messages") or [
            {"role": "user" if m.get("from", "") == "human" else "assistant", "content": m["value"]}
            for m in record.get("conversations", [])] or [
            {"role": "user", "content": record["input"]}, {"role": "assistant", "content": record["output"]}]
        lengths.append(len(qwen_tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)) - 1)
    full_long = len(qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": PITCH}, {"role": "assistant", "content": "ok"}], tokenize=True,
        return_dict=False)) - 1
    assert full_long > 64 and stats["dropped_tokens"] > 0
    lengths.append(full_long - stats["dropped_tokens"])
    assert stats["tokens"] == sum(lengths)
    assert stats["untrained_tokens"] == stats["tokens"] - stats["trained_tokens"]
    assert stats["length_percentiles"]["p0"] == min(lengths) and stats["length_percentiles"]["p100"] == max(lengths)
    assert max(lengths) <= 64


def test_inspect_command_marks_trained_tokens_when_piped(tmp_path, tiny_qwen_dir, cache_dir):
    path = write_jsonl(tmp_path / "hand.jsonl", RECORDS)
    result = subprocess.run([sys.executable, "train.py", "inspect", "--data_path", str(path), "--model_name",
                             str(tiny_qwen_dir), "--cache_dir", str(cache_dir), "--max_length", "64",
                             "--examples", "3"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Records: 5 (input/output 3, messages 1, sharegpt 1); multi-turn conversations: 1" in out
    assert "Over --max_length 64: 1 shortened" in out
    assert "Duplicates: 1 records repeat an earlier one" in out
    assert "<|im_start|>assistant\n[[Go away.<|im_end|>]]\n" in out
    assert "[[Who is this?<|im_end|>]]" in out and "[[Not interested.<|im_end|>]]" in out
    assert "\033[" not in out  # no colour codes when piped


def test_inspect_accepts_the_training_config(tmp_path):
    yaml = tmp_path / "run.yaml"
    yaml.write_text(f"data_path: {tmp_path / 'x.jsonl'}\nmax_length: 128\nlr: 1.0e-4\n")
    config = parse_args(["--config", str(yaml), "--examples", "1"], InspectConfig)
    assert config.max_length == 128 and config.examples == 1 and config.lr == 1e-4


def test_inspect_counts_and_shows_the_system_prompt_the_template_inserts(tmp_path, cache_dir, qwen_tokenizer):
    from conftest import SMOLLM2_TEMPLATE, load_qwen_tokenizer
    path = write_jsonl(tmp_path / "hand.jsonl", RECORDS)
    data = tokenize_file(path, qwen_tokenizer, FormatOptions(), 64, cache_dir, progress=False)
    stats = data_statistics(data, eval_split=0.4, seed=1, tokenizer=qwen_tokenizer)
    assert stats["template_system_added"] == 4  # five records, one with its own system message
    assert stats["template_system_prompt"] == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    smollm2 = data_statistics(data, eval_split=0.4, seed=1, tokenizer=load_qwen_tokenizer(SMOLLM2_TEMPLATE))
    assert smollm2["template_system_prompt"].startswith("You are a helpful AI assistant named SmolLM")
    with_persona = data_statistics(tokenize_file(path, qwen_tokenizer, FormatOptions(system_prompt="You are Dana."), 64,
                                                 cache_dir, progress=False), 0.4, 1, qwen_tokenizer)
    assert with_persona["template_system_added"] == 0
