"""Every kind of bad input gets one line naming the file, the line (or item) and the fault."""

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, write_jsonl

from core.config import FormatOptions
from core.data.conversations import load_conversations
from core.errors import DataError

GOOD = {"input": "Hi", "output": "Hello."}


def load(path, **options):
    return list(load_conversations(path, FormatOptions(**options)))


def error_of(path, **options) -> str:
    with pytest.raises(DataError) as info:
        load(path, **options)
    message = str(info.value)
    assert "\n" not in message
    return message


CASES = [  # (records as JSONL lines, expected message after "<file> ")
    (['{"input": "Hi", "output": "Yo"', ], r"line 1: invalid JSON"),
    ([GOOD, {"output": "Hello."}], r"line 2: missing 'input'"),
    ([GOOD, GOOD, {"input": "Hi"}], r"line 3: missing 'output'"),
    ([{"input": 3, "output": "x"}], r"line 1: 'input' must be a string, got int"),
    ([{"input": "Hi", "output": ["x"]}], r"line 1: 'output' must be a string, got list"),
    ([{"input": "Hi", "output": "  "}], r"line 1: empty output"),
    ([["not", "an", "object"]], r"line 1: a record must be a JSON object, got list"),
    ([{"prompt": "x"}], r"line 1: record has none of 'input'/'output', 'messages' or 'conversations'"),
    ([{"input": "a", "output": "b", "messages": []}], r"line 1: record mixes formats"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
     r"line 1: messages\[1\] has unknown role 'bot'"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}],
     r"line 1: conversations\[1\] has unknown from 'robot'"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}]}],
     r"line 1: messages\[1\] 'content' must be a string, got int"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"}]}],
     r"line 1: messages 0 and 1 are both 'user'; alternate the roles or pass --merge_consecutive"),
    ([{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]}],
     r"line 1: conversation has no assistant message to train on"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "c"}]}],
     r"line 1: message 1 is a system message; only the first message may be one"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c", "train": "no"}]}],
     r"line 1: messages\[1\] 'train' must be true or false"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c", "train": False}]}],
     r"line 1: every assistant message has 'train': false"),
    ([{"messages": "hello"}], r"line 1: 'messages' must be a list of messages, got str"),
    ([{"messages": [{"content": "a"}]}], r"line 1: messages\[0\] has no 'role'"),
]


@pytest.mark.parametrize("lines, expected", CASES)
def test_bad_record_messages(tmp_path, lines, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    message = error_of(path)
    assert message.startswith(f"{path} ")
    assert re.search(expected, message), message


def test_json_list_errors_name_the_item(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, GOOD, {"input": "x", "output": ""}]))
    assert error_of(path) == f"{path} item 2: empty output (assistant message 1 has no text)"
    path.write_text('{"input": "x"}')
    assert error_of(path) == f"{path}: a .json file must hold a list of records, got dict"
    path.write_text('[{"input": "x",\n "output": }]')
    assert error_of(path).startswith(f"{path} line 2: invalid JSON")


def test_file_level_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert error_of(empty) == f"{empty}: file is empty"
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    assert error_of(blank) == f"{blank}: file is empty (only blank lines)"
    csv = tmp_path / "data.csv"
    csv.write_text("input,output\n")
    assert "unknown extension '.csv'" in error_of(csv)
    assert error_of(tmp_path / "missing.jsonl") == f"{tmp_path / 'missing.jsonl'}: no such file"
    empty_list = tmp_path / "empty.json"
    empty_list.write_text("[]")
    assert error_of(empty_list) == f"{empty_list}: the list of records is empty"


def test_merge_consecutive_is_an_option_and_counted(tmp_path):
    from core.dataset import LoadStats
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]}, GOOD])
    stats = LoadStats()
    conversations = list(load_conversations(path, FormatOptions(merge_consecutive=True), stats))
    assert [m.content for m in conversations[0].messages] == ["a\n\nb", "c"]
    assert stats.merged_records == 1 and stats.records == 2


def test_special_token_in_content_is_refused(tmp_path, qwen_tokenizer):
    from core.data.chat_format import ChatEncoder
    from core.dataset import parse_record
    conversation, _ = parse_record("f line 4", {"input": "hi<|im_end|>", "output": "x"}, FormatOptions())
    with pytest.raises(DataError, match=r"f line 4: message 0 contains the special token '<\|im_end\|>'"):
        ChatEncoder(qwen_tokenizer, 512).encode(conversation)


def test_cli_prints_one_line_and_no_traceback(tmp_path, tiny_qwen_1k_dir):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"input": "x", "output": 1}\n')
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data_path", str(path), "--model_name",
                             str(tiny_qwen_1k_dir), "--output_dir", str(tmp_path / "out"), "--cache_dir",
                             str(tmp_path / "cache")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path} line 2: 'output' must be a string, got int"
    assert "Traceback" not in result.stdout + result.stderr
