"""A seeded sweep of malformed inputs: random byte and structure mutations of valid records and configs.

Each mutated file goes through the same path as `train.py inspect` (validate, tokenise, cache) or
the option parser, inside the command line's own error handling (`core.cli.report_errors`). The
invariant: either the file is accepted (exit 0, no error line) or it is rejected with exactly one
`error:` line that names the file, and never a traceback or a bug report.
"""

import copy
import io
import json
import random
from contextlib import redirect_stderr, redirect_stdout

import pytest

from core.cli import report_errors
from core.config import TrainConfig, parse_args
from core.data.tokenized import tokenize_file
from core.dataset import DataOptions

SEED = 20261128
VALID_RECORDS = [
    {"input": "Hi Dana, got a minute?", "output": "Not really. What is this about?"},
    {"system": "You are Tom, a plant manager.", "input": "I sell gloves.", "output": "We buy from Grainger."},
    {"messages": [{"role": "system", "content": "You are Ana."}, {"role": "assistant", "content": "Ana speaking."},
                  {"role": "user", "content": "Hi Ana."}, {"role": "assistant", "content": "Who is this?",
                                                           "train": False},
                  {"role": "user", "content": "Sam from Acme."}, {"role": "assistant", "content": "Go on."}]},
    {"conversations": [{"from": "human", "value": "Is this the owner?"}, {"from": "gpt", "value": "Yes."}]},
]
VALID_CONFIG = {"lr": 1.0e-4, "batch_size": 4, "epochs": 2, "lr_scheduler": "cosine", "packing": True,
                "system_prompt": "You are a prospect.", "eval_split": 0.1, "max_grad_norm": 1.0}
STRANGE_VALUES = [None, 0, -1, 1.5, float("inf"), True, "", " ", "x" * 300, [], {}, ["a"], {"a": 1}, "<|im_end|>",
                  "\u0000", "\ud7ff"]
STRANGE_KEYS = ["sytem", "inputs", "Output", "mesages", "role ", "contnet", "trian", "id", "", "0"]


def mutate_structure(rng: random.Random, value):
    """Pick a random spot in a JSON value and change its type, drop it, rename it or add a stray key."""
    value = copy.deepcopy(value)
    containers = [value]
    node = value
    while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if not isinstance(node[key], (dict, list)):
            break
        node = node[key]
        containers.append(node)
    target = rng.choice(containers)
    if isinstance(target, dict) and target:
        key = rng.choice(list(target))
        action = rng.randrange(4)
        if action == 0:
            del target[key]
        elif action == 1:
            target[rng.choice(STRANGE_KEYS)] = target.pop(key)
        elif action == 2:
            target[key] = rng.choice(STRANGE_VALUES)
        else:
            target[rng.choice(STRANGE_KEYS)] = rng.choice(STRANGE_VALUES)
    elif isinstance(target, list) and target:
        index = rng.randrange(len(target))
        action = rng.randrange(3)
        if action == 0:
            del target[index]
        elif action == 1:
            target.insert(index, copy.deepcopy(target[rng.randrange(len(target))]))
        else:
            target[index] = rng.choice(STRANGE_VALUES)
    else:
        return rng.choice(STRANGE_VALUES)
    return value


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Cut, duplicate, flip or insert bytes (invalid UTF-8 and stray brackets included)."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        action = rng.randrange(4)
        if action == 0:
            del data[at:at + rng.randint(1, 20)]
        elif action == 1:
            data[at:at] = rng.choice([b"\xff", b"\xc3", b"{", b"]", b"\n", b'"', b"\x00", b",,", b"\\u12"])
        elif action == 2 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        else:
            data = data[:at]
    return bytes(data)


def data_case(rng: random.Random, index: int, tmp_path) -> tuple[object, bytes]:
    records = [copy.deepcopy(rng.choice(VALID_RECORDS)) for _ in range(rng.randint(1, 4))]
    suffix = rng.choice([".jsonl", ".json"])
    if rng.random() < 0.5:
        victim = rng.randrange(len(records))
        records[victim] = mutate_structure(rng, records[victim])
        as_bytes = None
    else:
        as_bytes = True
    text = ("".join(json.dumps(r) + "\n" for r in records) if suffix == ".jsonl" else json.dumps(records)).encode()
    if as_bytes:
        text = mutate_bytes(rng, text)
    path = tmp_path / f"case{index}{suffix}"
    path.write_bytes(text)
    return path, text


def quietly(command) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = report_errors(command)
    return code, out.getvalue() + err.getvalue()


def check(code: int, output: str, names: tuple[str, ...]) -> None:
    """Exit 0 and no error line, or one error line that names one of `names` (the file, or the bad option)."""
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in output and "internal error" not in output, output
    if code == 0:
        assert not errors, output
    else:
        assert len(errors) == 1 and any(name in errors[0] for name in names), (code, output)


@pytest.mark.parametrize("batch", range(4))
def test_mutated_data_files_are_accepted_or_refused_in_one_line(tmp_path, qwen_tokenizer, batch):
    rng = random.Random(SEED + batch)
    outcomes = {"accepted": 0, "refused": 0}
    for index in range(60):
        path, _ = data_case(rng, index, tmp_path)

        def inspect_file(path=path):
            tokenize_file(path, qwen_tokenizer, DataOptions(), 128, tmp_path / "cache", progress=False)
            return 0

        code, output = quietly(inspect_file)
        check(code, output, (str(path),))
        outcomes["accepted" if code == 0 else "refused"] += 1
    assert outcomes["refused"] > 30  # the sweep does produce broken files, and each was refused cleanly


def test_mutated_config_files_are_accepted_or_refused_in_one_line(tmp_path):
    rng = random.Random(SEED)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(VALID_RECORDS[0]) + "\n")
    refused = 0
    for index in range(120):
        path = tmp_path / f"config{index}.yaml"
        if rng.random() < 0.5:
            mutated = mutate_structure(rng, VALID_CONFIG)
            text = "\n".join(f"{k}: {json.dumps(v)}" for k, v in mutated.items()).encode() \
                if isinstance(mutated, dict) else json.dumps(mutated).encode()
        else:
            text = mutate_bytes(rng, "\n".join(f"{k}: {json.dumps(v)}" for k, v in VALID_CONFIG.items()).encode())
        path.write_bytes(text)
        code, output = quietly(lambda path=path: parse_args(["--config", str(path), "--data_path", str(data)],
                                                           TrainConfig) and 0)
        check(code, output, (str(path), "error: --"))  # a value out of range is named by its option
        refused += code != 0
    assert refused > 40
