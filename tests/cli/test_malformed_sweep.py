"""A seeded sweep of malformed inputs: random byte and structure mutations of valid records and configs.

Each mutated file goes through the same path as `train.py inspect` (validate, tokenise, cache) or
the option parser, inside the command line's own error handling (`core.cli.report_errors`). The
invariant: either the file is accepted (exit 0, no error line) or it is rejected with exactly one
`error:` line that names the file, and never a traceback or a bug report. Files are tokenised by the
1k-vocabulary Qwen-style tokenizer (tests/conftest.py `qwen_1k_tokenizer`).
"""

import copy
import io
import json
import os
import random
import shutil
from contextlib import redirect_stderr, redirect_stdout

import pytest

from core.cli import report_errors
from core.config import FormatOptions, TrainConfig, parse_args
from core.data.tokenized import tokenize_file

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
def test_mutated_data_files_are_accepted_or_refused_in_one_line(tmp_path, qwen_1k_tokenizer, batch):
    rng = random.Random(SEED + batch)
    outcomes = {"accepted": 0, "refused": 0}
    for index in range(60):
        path, _ = data_case(rng, index, tmp_path)

        def inspect_file(path=path):
            tokenize_file(path, qwen_1k_tokenizer, FormatOptions(), 128, tmp_path / "cache", progress=False)
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


def test_mutated_yaml_documents_are_accepted_or_refused_in_one_line(tmp_path):
    """Whole YAML documents (not only `key: json` lines): flow and block styles, anchors, tags, nesting, BOMs."""
    import yaml
    rng = random.Random(SEED + 7)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(VALID_RECORDS[0]) + "\n")
    extras = [b"\xef\xbb\xbf", b"&a ", b"*a", b"!!python/object:os.system ", b"? ", b"- ", b"{", b"[[[[", b"\t",
              b"lr: 1e-5\n", b"lr: -1e-5\n", b"seed: 99999999999999999999999\n", b"<<: *a\n", b"%YAML 1.2\n---\n"]
    refused = 0
    for index in range(80):
        style = rng.choice([False, True, None])
        text = yaml.safe_dump(mutate_structure(rng, VALID_CONFIG) if rng.random() < 0.5 else VALID_CONFIG,
                              default_flow_style=style).encode()
        for _ in range(rng.randint(1, 2)):
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(extras) + text[at:]
        path = tmp_path / f"doc{index}.yaml"
        path.write_bytes(text)
        code, output = quietly(lambda path=path: parse_args(["--config", str(path), "--data_path", str(data)],
                                                           TrainConfig) and 0)
        check(code, output, (str(path), "error: --"))
        refused += code != 0
    assert refused > 20


def mutated_lines(rng: random.Random, records: list, text: bytes) -> bytes:
    """A JSONL file of `records` (whose bytes are `text`) with one record's structure or the bytes mutated."""
    if rng.random() < 0.5:
        victim = rng.randrange(len(records))
        records[victim] = mutate_structure(rng, records[victim])
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    return mutate_bytes(rng, text)


def transcript_case(rng: random.Random, index: int, tmp_path):
    """A file of saved practice conversations (what `chat`'s /save appends: `messages` records), mutated.

    """
    records = [{"messages": [{"role": "system", "content": "You are Dana."}, {"role": "user", "content": "Hi."},
                             {"role": "assistant", "content": f"Who is this? {i}"}]} for i in range(rng.randint(1, 3))]
    path = tmp_path / f"saved{index}.jsonl"
    path.write_bytes(mutated_lines(rng, records, "".join(json.dumps(r) + "\n" for r in records).encode()))
    return path


def test_mutated_transcript_files_are_accepted_or_refused_in_one_line(tmp_path, qwen_1k_tokenizer):
    from core.use.chat_cli import Commands
    from core.use.feedback import FeedbackFile
    from core.use.practice import PracticeSession
    rng = random.Random(SEED + 11)
    refused_by_save = 0
    for index in range(60):
        path = transcript_case(rng, index, tmp_path)
        before = path.read_bytes()
        session = PracticeSession(FeedbackFile(tmp_path / "feedback.jsonl"), "You are Dana.")
        session.show([[{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Yes?"}]], ["m"])
        commands = Commands(session, [])
        code, output = quietly(lambda path=path, commands=commands: print(commands.run(f"/save {path}")) or 0)
        assert code == 0 and "Traceback" not in output, output
        if output.startswith("Not saved"):
            refused_by_save += 1
            assert path.read_bytes() == before and str(path) in output  # a file /save did not write is left alone
        else:
            assert path.read_bytes().startswith(before) and output.startswith("Saved")

        def train_on(path=path):
            tokenize_file(path, qwen_1k_tokenizer, FormatOptions(), 128, tmp_path / "cache", progress=False)
            return 0
        check(*quietly(train_on), (str(path),))
    assert refused_by_save > 10


class Scripted:
    """A model that says the given reply (the session's answering interface, without a model)."""

    def __init__(self, name: str, reply: str):
        self.name, self.reply = name, reply

    def stream(self, messages, seed=None):
        yield self.reply


def practised(path, rng: random.Random, index: int):
    """A feedback file as the practice apps write it (core/use/practice.py: thumbs, rewrite, better of two)."""
    from core.use.feedback import FeedbackFile
    from core.use.practice import PracticeSession
    session = PracticeSession(FeedbackFile(path), "You are Dana.", sides=2, source="web")
    session.say("Hi.")
    list(session.answer(0, Scripted("best_model", f"Who is this? {index}")))
    list(session.answer(1, Scripted("base", "Sure, tell me everything!")))
    session.judge(rng.random() < 0.5)
    session.prefer(0)
    session.rewrite("Dana here. What is it about?")
    return session


def feedback_case(rng: random.Random, index: int, tmp_path):
    """A feedback file written by a practice session, mutated."""
    path = tmp_path / f"feedback{index}.jsonl"
    practised(path, rng, index)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_bytes(mutated_lines(rng, records, path.read_bytes()))
    return path


def test_mutated_feedback_files_are_accepted_or_refused_in_one_line(tmp_path, qwen_1k_tokenizer):
    """What --objective dpo and kto read first (the check before the model loads), then tokenise."""
    from core.data.preference import count_usable, tokenize_preferences
    rng = random.Random(SEED + 13)
    refused = 0
    for index in range(60):
        path = feedback_case(rng, index, tmp_path)
        objective = rng.choice(("dpo", "kto"))

        def read(path=path, objective=objective):
            count_usable(path, objective, FormatOptions())
            tokenize_preferences(path, qwen_1k_tokenizer, FormatOptions(), 128, tmp_path / "cache")
            return 0
        code, output = quietly(read)
        check(code, output, (str(path),))
        refused += code != 0
    assert refused > 10


def test_feedback_files_cut_short_at_every_length_are_read_and_appended_to_whole(tmp_path):
    """A kill can stop an append at any byte: the reader skips the line cut short (or refuses a file with no
    whole record, in one line) and the next judgement starts on a fresh line, whole."""
    from core.data.preference import count_usable
    path = tmp_path / "feedback.jsonl"
    session = practised(path, random.Random(SEED), 0)
    written = path.read_bytes()
    for length in range(len(written) + 1):
        path.write_bytes(written[:length])
        tail = written[:length].rsplit(b"\n", 1)[-1]  # the last line: whole (no end of line yet) or cut short
        cut = bool(tail) and tail not in written.split(b"\n")
        whole = written[:length].count(b"\n") + (bool(tail) and not cut)
        code, output = quietly(lambda: count_usable(path, "kto", FormatOptions()) and 0)
        check(code, output, (str(path),))
        assert (code == 0) == (whole > 0) and ("cut short" in output) == cut
        session.judge(False)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(records) == whole + 1 and records[-1]["label"] is False
    sft = path.with_name("feedback.sft.jsonl")  # the rewrite's SFT sibling, appended the same way
    assert [json.loads(line)["messages"][-1]["content"] for line in sft.read_text().splitlines()] == [
        "Dana here. What is it about?"]


CHECKPOINT_JSON = ["checkpoint-4/trainer_state.json", "checkpoint-4/train_config.json", "run.json", "summary.json",
                   "metrics.jsonl"]


def mutated_copy(rng: random.Random, source, target, name: str) -> None:
    """`source` with hard links for the large files and `name` mutated (structure or bytes)."""
    for path in source.rglob("*"):
        copy_to = target / path.relative_to(source)
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            copy_to.mkdir(exist_ok=True)
        elif path.suffix in (".json", ".jsonl"):
            copy_to.write_bytes(path.read_bytes())
        else:
            os.link(path, copy_to)
    victim = target / name
    text = victim.read_bytes()
    if rng.random() < 0.5 and name != "metrics.jsonl":
        victim.write_text(json.dumps(mutate_structure(rng, json.loads(text))))
    else:
        victim.write_bytes(mutate_bytes(rng, text))


@pytest.mark.parametrize("name", CHECKPOINT_JSON)
def test_mutated_checkpoint_json_files_are_resumed_from_or_refused_in_one_line(tmp_path, finished_run, name):
    """Resuming reads these files (find the checkpoint, compare fingerprints, cut the logs, claim the directory;
    run.json and summary.json where no checkpoint is left): a damaged one is skipped with its reason or refused
    in one line naming the directory, never a bug."""
    from core.train.checkpoint import find_resume, load_checkpoint
    from core.train.fingerprint import check_resumable
    from core.train.output_dir import claim_output_dir, start_afresh, truncate_logs
    run = finished_run / "out"  # checkpoint-4 is the only one the sweep keeps
    fingerprint = json.loads((run / "run.json").read_text())
    rng = random.Random(SEED + CHECKPOINT_JSON.index(name))
    outcomes = {"accepted": 0, "refused": 0}
    for index in range(12):
        out = tmp_path / f"case{index}"
        mutated_copy(rng, run, out, name)
        shutil.rmtree(out / "checkpoint-2")
        if name in ("run.json", "summary.json"):
            shutil.rmtree(out / "checkpoint-4")

        def resume(out=out):
            restored = find_resume("auto", out, log=print)
            if restored is None:
                start_afresh(out, fingerprint, log=print)
            else:
                check_resumable(restored.path, restored.fingerprint, fingerprint, False, log=print)
                truncate_logs(out, restored.state.step, log=print)
            claim_output_dir(out, fingerprint, restored is not None, False, log=print)
            if restored is not None:
                load_checkpoint(out / "checkpoint-4")
            return 0

        code, output = quietly(resume)
        check(code, output, (str(out),))
        outcomes["accepted" if code == 0 else "refused"] += 1
    assert outcomes["refused"] >= (1 if name == "metrics.jsonl" else 3), outcomes  # the sweep does break them
