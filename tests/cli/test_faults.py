"""Every fault a user can cause ends in one line, a non-zero exit and an intact disk (issues: keep the promise,
rounds one and two).

Each test is one reproduction from a fault report, numbered as there (round two's as `r2_N`, its unclear
messages as `unclear_`), run through the command line's own entry point (`core.cli.main`) in this process,
so that what is checked is what a user sees: the exit code, exactly one `error:` line, no traceback, and
what is on disk afterwards (a listing with checksums before and after).
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import ROOT, assert_error, cli, make_config, sample_data, write_jsonl

from core.errors import TrainingStopped
from core.train.checkpoint import latest_checkpoint
from core.train.run_setup import setup
from core.trainer import fit


def temporaries(directory) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*.tmp-*")) if directory.is_dir() else []


def snapshot(root) -> dict[str, str]:
    """Every path under `root` with its file's sha256 ('dir' for a directory): what is on disk, to compare."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# 1. A stop in the final step --------------------------------------------------------------------

def test_1_a_stop_during_the_last_step_is_finished_by_the_resumed_run(tmp_path, tiny_qwen_1k_dir, cache_dir):
    write_jsonl(tmp_path / "data.jsonl", [{"input": f"Hi {i}", "output": f"Go away {i}."} for i in range(4)])
    config = make_config(tmp_path, tiny_qwen_1k_dir, cache_dir, batch_size=1, eval_split=0.25, save_steps=0)
    run = setup(config, log=lambda *_: None)
    assert run.optim.total_steps == 3

    def sigint_in_step_3(name, run, **details):
        if name == "micro_batch" and run.state.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run.on_event = sigint_in_step_3
    with pytest.raises(TrainingStopped) as stopped:
        fit(run, log=lambda *_: None)
    out = tmp_path / "out"
    assert stopped.value.checkpoint == out / "checkpoint-3" and not (out / "epoch_1").exists()
    code, output = cli("--data_path", config.data_path, "--model_name", tiny_qwen_1k_dir, "--cache_dir", cache_dir,
                       "--output_dir", out, "--batch_size", "1", "--eval_split", "0.25", "--lr", "1e-3",
                       "--epochs", "1", "--save_steps", "0", "--resume_from_checkpoint", "auto",
                       "--sample_prompts", "0")
    assert code == 0, output[-2000:]
    assert (out / "epoch_1" / "model.safetensors").is_file() and (out / "best_model" / "model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["stopped"] == "completed"
    assert json.loads((out / "best_model" / "best.json").read_text())["step"] == 3  # not a stale best_model
    evals = [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [3]


# 2. Non-finite settings --------------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [("--lr", "inf"), ("--lr", "nan"), ("--max_grad_norm", "nan"),
                                           ("--warmup_ratio", "nan"), ("--weight_decay", "-inf")])
def test_2_non_finite_options_are_refused_before_anything_loads(args, tmp_path, option, value):
    assert_error(cli(*args, f"{option}={value}"), rf"--{option[2:]} must be (a finite number|in|.*negative)", 2)
    assert not (tmp_path / "out").exists()


def test_2_a_diverging_run_stops_at_its_first_validation_and_saves_no_best_model(args, tmp_path):
    line = assert_error(cli(*args, "--lr", "1e30", "--warmup_ratio", "0", "--eval_steps", "1"),
                        r"(validation loss at step 1 is not finite|model diverged)", 1)
    assert "lower --lr" in line
    assert not (tmp_path / "out" / "best_model").exists()


def test_2_a_diverging_short_run_without_validation_writes_no_model(args, tmp_path):
    line = assert_error(cli(*args, "--lr", "1e30", "--warmup_ratio", "0", "--eval_split", "0", "--max_steps", "3"),
                        r"(non-finite|diverged)", 1)
    assert "lower --lr" in line
    assert not (tmp_path / "out" / "best_model").exists() and not list((tmp_path / "out").glob("checkpoint-*"))


# 3. A full disk during a save --------------------------------------------------------------------

def full_disk_in_torch_save(monkeypatch):
    from core.train import checkpoint
    original = checkpoint.torch.save

    def failing(obj, path, *a, **k):
        if "checkpoint-4" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1234 vs 1200")
        return original(obj, path, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", failing)


def full_disk_in_safetensors(monkeypatch):
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError
    original = modeling_utils.safe_save_file

    def failing(tensors, path, *a, **k):
        if "checkpoint-4" in str(path):
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        return original(tensors, path, *a, **k)
    monkeypatch.setattr(modeling_utils, "safe_save_file", failing)


@pytest.mark.parametrize("inject", [full_disk_in_torch_save, full_disk_in_safetensors], ids=["torch", "safetensors"])
def test_3_a_full_disk_stops_the_run_keeps_the_previous_checkpoint_and_leaves_no_temporary(args, tmp_path,
                                                                                          monkeypatch, inject):
    inject(monkeypatch)
    assert_error(cli(*args, "--save_steps", "2", "--eval_split", "0"),
                 r"could not write .*checkpoint-4: No space left on device.*; earlier checkpoints are intact", 1)
    out = tmp_path / "out"
    assert (out / "checkpoint-2" / "training_state.pt").is_file() and not (out / "checkpoint-4").exists()
    assert temporaries(out) == []


# 4. Misspelt keys ----------------------------------------------------------------------------------

@pytest.mark.parametrize("record, pattern", [
    ({"sytem": "You are Dana.", "input": "Hi", "output": "Yes?"}, r"unknown key 'sytem' \(did you mean 'system'\?"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?", "trian": False}]},
     r"messages\[1\]: unknown key 'trian' \(did you mean 'train'\?"),
    ({"conversations": [{"from": "human", "vaule": "Hi"}, {"from": "gpt", "value": "Yes?"}]},
     r"conversations\[0\]: unknown key 'vaule' \(did you mean 'value'\?"),
])
def test_4_misspelt_keys_are_refused_with_a_suggestion(args, tmp_path, record, pattern):
    write_jsonl(tmp_path / "data.jsonl", [{"input": "Hello", "output": "Hi."}] * 3 + [record])
    assert_error(cli(*args), rf"data.jsonl line 4: {pattern}", 2)


def test_4_extra_keys_are_accepted_when_asked_for(args, tmp_path, qwen_tokenizer):
    write_jsonl(tmp_path / "data.jsonl", [{"id": i, "input": f"Hello {i}", "output": "Hi."} for i in range(8)])
    assert_error(cli("inspect", *args[:6]), r"unknown key 'id'", 2)
    code, output = cli("inspect", *args[:6], "--allow_extra_keys")
    assert code == 0 and "Records: 8" in output


# 5. Reusing an output directory ----------------------------------------------------------------------

def test_5_an_output_dir_of_another_run_is_refused_then_overwritten_on_request(args, tmp_path):
    assert cli(*args, "--max_steps", "2", "--save_steps", "2")[0] == 0
    out = tmp_path / "out"
    before = sorted(p.name for p in out.iterdir())
    metrics = (out / "metrics.jsonl").read_text()
    sample_data(tmp_path, 16)  # other data
    line = assert_error(cli(*args, "--max_steps", "2"), r"holds another run \(data file", 1)
    assert "--overwrite_output_dir" in line
    assert sorted(p.name for p in out.iterdir()) == before and (out / "metrics.jsonl").read_text() == metrics
    assert_error(cli(*args, "--resume_from_checkpoint", "auto"), r"different inputs: data file", 1)
    code, output = cli(*args, "--max_steps", "1", "--overwrite_output_dir")
    assert code == 0, output[-2000:]
    assert not (out / "checkpoint-2").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()][-1] == 1


def test_5_the_same_run_again_is_pointed_to_resume(args, tmp_path):
    assert cli(*args, "--max_steps", "1")[0] == 0
    assert_error(cli(*args, "--max_steps", "1"), r"already holds a run with the same data and options; pass "
                                                 r"--resume_from_checkpoint auto", 1)
    # --save_steps 0 wrote no checkpoint-N/, so 'auto' has nothing to continue: the finished run is not redone
    before = snapshot(tmp_path / "out")
    assert_error(cli(*args, "--max_steps", "1", "--resume_from_checkpoint", "auto"),
                 r"already finished \(max_steps\) and with no checkpoint to continue from .*--overwrite_output_dir", 1)
    assert snapshot(tmp_path / "out") == before


# 6. The most common mistakes ----------------------------------------------------------------------------

def replace_arg(args, flag, value):
    i = args.index(flag)
    return args[:i + 1] + [value] + args[i + 2:]


def test_6_common_mistakes_give_one_line(args, tmp_path):
    assert_error(cli(*replace_arg(args, "--data_path", tmp_path / "dta.jsonl")), r"dta.jsonl: no such file", 2)
    (tmp_path / "folder.jsonl").mkdir()
    assert_error(cli(*replace_arg(args, "--data_path", tmp_path / "folder.jsonl")), r"is a directory", 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"input": "Hi", "output": "Yes."}\n{"input": "caf\xe9", "output": "x"}\n')
    assert_error(cli(*replace_arg(args, "--data_path", bad)), r"bad.jsonl line 2: not UTF-8 text \(byte 0xe9", 2)
    yaml = tmp_path / "run.yaml"
    yaml.write_bytes(b"lr: 1.0e-4\n# caf\xe9\n")
    assert_error(cli(*args, "--config", yaml), r"run.yaml: the config file is not UTF-8 text", 2)
    (tmp_path / "a_file").write_text("x")
    assert_error(cli(*replace_arg(args, "--output_dir", tmp_path / "a_file")), r"--output_dir .* is a file", 2)
    assert_error(cli(*replace_arg(args, "--cache_dir", tmp_path / "a_file")), r"--cache_dir .* is a file", 2)
    if not torch.cuda.is_available():
        assert_error(cli(*args, "--device", "cuda"), r"--device cuda was requested but is not available", 2)
        assert_error(cli(*args, "--precision", "fp16"), r"--precision fp16 needs a CUDA GPU", 2)
    assert_error(cli(*args, "--seed", "-1"), r"--seed must not be negative", 2)
    assert_error(cli(*args, "--batch_size", "two"), r"argument --batch_size: invalid int value", 2)
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    assert_error(cli(*replace_arg(args, "--model_name", fake)), r"model.gguf: not a GGUF file", 2)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file, so an unreadable file cannot be made")
def test_6_an_unreadable_data_file_gives_one_line(args, tmp_path):
    (tmp_path / "data.jsonl").chmod(0)
    assert_error(cli(*args), r"cannot read the file \(Permission denied\)", 2)


# 7. Damaged checkpoints -------------------------------------------------------------------------------


class Unsafe:
    pass


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated training_state.pt": (lambda c: truncate(c / "training_state.pt"), r"cannot be read safely"),
    "truncated model.safetensors": (lambda c: truncate(c / "model.safetensors"), r"truncated or damaged"),
    "broken trainer_state.json": (lambda c: (c / "trainer_state.json").write_text("{\"state\": "), r"damaged"),
    "missing train_config.json": (lambda c: (c / "train_config.json").unlink(), r"no train_config.json"),
    "unsafe pickle": (lambda c: torch.save({"optimizer": Unsafe()}, c / "training_state.pt"),
                      r"cannot be read safely \(Weights only load failed"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_7_a_damaged_checkpoint_is_refused_and_auto_takes_the_newest_intact_one(finished_run, tmp_path, cache_dir,
                                                                                tiny_qwen_1k_dir, damage):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    out = tmp_path / "out"
    harm, pattern = DAMAGE[damage]
    harm(out / "checkpoint-4")
    base = ["--data_path", tmp_path / "data.jsonl", "--model_name", tiny_qwen_1k_dir, "--cache_dir", cache_dir,
            "--output_dir", out, "--batch_size", "2", "--save_steps", "2", "--max_steps", "4", "--eval_split", "0.25",
            "--lr", "1e-3", "--sample_prompts", "0"]
    assert_error(cli(*base, "--resume_from_checkpoint", out / "checkpoint-4"), pattern, 1)
    code, output = cli(*base, "--resume_from_checkpoint", "auto")
    assert code == 0, output[-2000:]
    assert re.search(rf"Skipping checkpoint-4: .*{pattern}", output) and f"Resuming from {out / 'checkpoint-2'}" \
        in output
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()  # written again by the resumed run
    json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())


# 8. Caches keyed on more than bytes ------------------------------------------------------------------

def test_8_the_same_bytes_under_another_extension_are_read_by_that_extension(args, tmp_path):
    assert cli("inspect", *args[:6])[0] == 0  # cached as JSONL
    renamed = tmp_path / "data.json"
    shutil.copy(tmp_path / "data.jsonl", renamed)
    assert_error(cli("inspect", *replace_arg(args[:6], "--data_path", renamed)), r"data.json line 2: invalid JSON", 2)


# 9. Leftovers --------------------------------------------------------------------------------------

def test_9_stale_temporaries_are_removed_and_reported(args, tmp_path):
    assert cli(*args, "--max_steps", "2", "--save_steps", "2")[0] == 0
    out = tmp_path / "out"
    stale = out / ".checkpoint-4.tmp-999999999"
    (stale / "nested").mkdir(parents=True)
    code, output = cli(*args, "--max_steps", "3", "--resume_from_checkpoint", "auto", "--force_resume")
    assert code == 0, output[-2000:]
    assert "Removed 1 unfinished temporary directories left by an earlier crash: .checkpoint-4.tmp-999999999" in output
    assert not stale.exists()


def test_9_a_second_signal_during_a_save_leaves_no_temporary_directory(args, tmp_path, monkeypatch):
    from core.train import checkpoint
    original = checkpoint.torch.save

    def signalled_twice(obj, path, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # the first: finish the step and save ...
        os.kill(os.getpid(), signal.SIGINT)  # ... the second, while saving: leave at once
        return original(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", signalled_twice)
    # checkpoint-2 is written in the background: the second signal stops training at once, while the write goes
    # on in its thread (killed with the process, it would leave only a hidden temporary, removed by the next run).
    # Two signals sent together can arrive as one: the stop then writes the next save at once, and its signals
    # interrupt that write, which removes its temporary directory.
    assert_error(cli(*args, "--save_steps", "2"), r"stopped at once by a second SIGINT while training; (no checkpoint "
                                                  r"was written|the newest complete checkpoint is .*checkpoint-2)",
                 128 + signal.SIGINT)
    out = tmp_path / "out"
    deadline = time.time() + 60  # the write in flight when the second signal came goes on in its thread
    while temporaries(out) and time.time() < deadline:
        time.sleep(0.1)
    assert temporaries(out) == []
    assert not (out / "checkpoint-2").exists() or latest_checkpoint(out).path == out / "checkpoint-2"


def test_9_ctrl_c_during_tokenisation_gives_one_line(args, tmp_path, monkeypatch, cache_dir):
    from core.data.chat_format import ChatEncoder

    def interrupted(self, conversations):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(500):  # the handler runs in this (main) thread at the latest when a sleep is interrupted
            time.sleep(0.01)
        raise AssertionError("the SIGINT was not delivered")
    sample_data(tmp_path, 30)  # new bytes: tokenised afresh
    monkeypatch.setattr(ChatEncoder, "encode_many", interrupted)
    assert_error(cli(*args), r"interrupted by SIGINT while tokenising .*data.jsonl; the tokenised cache entry was "
                             r"not written", 130)
    assert temporaries(cache_dir / "tokens") == []


# 10. Confusing messages ------------------------------------------------------------------------------

def test_10_messages_name_the_real_cause(args, tmp_path):
    assert_error(cli(*replace_arg(args, "--model_name", tmp_path / "models" / "qwen-typo")),
                 r"no such local directory; check the path", 2)
    assert_error(cli(*args, "--system_prompt", "You are Dana.<|im_end|>"),
                 r"^error: --system_prompt contains the special token '<\|im_end\|>'", 2)
    write_jsonl(tmp_path / "data.jsonl", [{"input": "Hi", "output": "Go away."}])
    assert_error(cli(*args, "--eval_split", "0.1", "--early_stopping_patience", "2"),
                 r"--eval_split 0.1 of 1 records holds out no validation record", 2)


# Round two ===========================================================================================
# r2_1. Nothing is destroyed that the command did not create: one check for every writing command

@pytest.fixture
def inputs(tmp_path, tiny_qwen_1k_dir):
    """A data directory, a model directory, a scenarios file and a directory of the user's own files."""
    (tmp_path / "data").mkdir()
    sample_data(tmp_path / "data", 8)
    shutil.copytree(tiny_qwen_1k_dir, tmp_path / "model")
    (tmp_path / "personas.txt").write_text("You are Dana, a busy office manager.")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own notes")
    return tmp_path


def train_case(tmp, cache_dir, case):
    target = {"equal": tmp / "data", "inside": tmp / "data" / "out", "other": tmp / "mine"}[case]
    return ["--data_path", tmp / "data", "--model_name", tmp / "model", "--cache_dir", cache_dir,
            "--output_dir", target, "--max_steps", "1", "--sample_prompts", "0"]


def export_case(tmp, cache_dir, case):
    target = {"equal": tmp / "model", "inside": tmp / "model" / "gguf", "other": tmp / "mine"}[case]
    return ["export", "--model", tmp / "model", "--output_dir", target, "--formats", "f16"]


def evaluate_case(tmp, cache_dir, case):
    data = tmp / "data" / "data.jsonl" if case == "equal" else tmp / "data"
    target = {"equal": data, "inside": tmp / "data" / "evaluation.jsonl", "other": tmp / "mine" / "notes.txt"}[case]
    return ["evaluate", "--model", tmp / "model", "--data_path", data, "--output", target, "--no-replies",
            "--cache_dir", cache_dir]


def inspect_case(tmp, cache_dir, case):
    target = {"equal": tmp / "data", "inside": tmp / "data" / "cache"}[case]
    return ["inspect", "--data_path", tmp / "data", "--model_name", tmp / "model", "--cache_dir", target]


REFUSALS = {"equal": r"is also the input --(data_path|model)", "inside": r"lies inside the input --(data_path|model)",
            "other": r"is an existing (directory|file) that is not"}
COMMANDS = {"train": train_case, "export": export_case, "evaluate": evaluate_case, "inspect": inspect_case}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_r2_1_an_output_that_is_an_input_inside_one_or_not_ours_is_refused_before_any_work(inputs, cache_dir,
                                                                                           command, case):
    if command == "inspect" and case == "other":
        pytest.skip("inspect writes only its own tokens/ inside --cache_dir: any existing directory will do")
    before = snapshot(inputs)
    pattern = REFUSALS[case] if command != "inspect" else REFUSALS[case].replace("--(data_path|model)", "--data_path")
    assert_error(cli(*COMMANDS[command](inputs, cache_dir, case)), pattern, 2)
    assert snapshot(inputs) == before


@pytest.mark.parametrize("case, target, pattern", [
    ("equal", "personas.txt", r"is also the input --scenarios"),
    ("inside", "model/transcript.jsonl", r"lies inside the input --model"),
    ("other", "mine/notes.txt", r"is an existing file that is not a file of saved conversations"),
])
def test_r2_1_chat_save_refuses_the_same_paths(inputs, monkeypatch, case, target, pattern):
    lines = iter(["Hello, is this Dana?", f"/save {inputs / target}", f"/save {inputs / 'saved.jsonl'}",
                  f"/save {inputs / 'saved.jsonl'}", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    before = snapshot(inputs)
    code, output = cli("chat", "--model", inputs / "model", "--scenarios", inputs / "personas.txt",
                       "--max_new_tokens", "4", "--greedy")
    assert code == 0 and "Traceback" not in output, output
    assert re.search(rf"Not saved: /save .*{pattern}", output), output
    after = snapshot(inputs)  # besides its own file, only the team's store beside the model (the call is recorded)
    assert {k: v for k, v in after.items() if k != "saved.jsonl" and not k.startswith("practice.db")} == before
    assert len((inputs / "saved.jsonl").read_text().splitlines()) == 2  # its own file: appended to, twice


def test_r2_1_a_previous_output_is_replaced_whole(inputs, cache_dir):
    args = ["evaluate", "--model", inputs / "model", "--data_path", inputs / "data", "--output",
            inputs / "eval" / "evaluation.jsonl", "--no-replies", "--cache_dir", cache_dir]
    assert cli(*args)[0] == 0  # a missing directory is created
    first = snapshot(inputs / "eval")
    code, output = cli(*args)
    assert code == 0, output
    assert snapshot(inputs / "eval") == first and temporaries(inputs / "eval") == []
    export = ["export", "--model", inputs / "model", "--formats", "f16"]
    assert cli(*export)[0] == 0 and cli(*export)[0] == 0  # MODEL/export: its own default, replaced
    assert sorted(p.name for p in (inputs / "model" / "export").iterdir()) == ["Modelfile", "model-f16.gguf"]


# r2_2. A user's mistake is never called a bug

def test_r2_2_data_nested_too_deeply_or_with_a_lone_surrogate_is_named(args, tmp_path):
    (tmp_path / "data.jsonl").write_text('{"input": "Hi", "output": "Yes."}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    assert_error(cli("inspect", *args[:6]), r"data.jsonl line 2: the JSON is nested too deeply", 2)
    (tmp_path / "data.jsonl").write_text('{"input": "Hi", "output": "Yes."}\n{"input": "Hi \\ud83d", "output": "x"}\n')
    assert_error(cli("inspect", *args[:6]), r"data.jsonl line 2: the text holds a lone UTF-16 surrogate \(\\ud83d.*"
                                            r"write the character itself", 2)


def test_r2_2_an_output_dir_that_cannot_be_created_is_refused_before_the_model_loads(args, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    import core.model.load
    monkeypatch.setattr(core.model.load, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
    assert_error(cli(*replace_arg(args, "--output_dir", tmp_path / "a_file" / "out")),
                 r"--output_dir .*a_file/out cannot be created: .*a_file is a file", 2)
    assert_error(cli("export", "--model", args[3], "--output_dir", tmp_path / "a_file" / "gguf"),
                 r"cannot be created: .*a_file is a file", 2)
    assert_error(cli("evaluate", "--model", args[3], "--data_path", args[1], "--output",
                     tmp_path / "a_file" / "e.jsonl"), r"cannot be created: .*a_file is a file", 2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere, so an unwritable directory cannot be made")
def test_r2_2_an_unwritable_output_dir_is_refused(args, tmp_path):
    (tmp_path / "locked").mkdir(mode=0o500)
    assert_error(cli(*replace_arg(args, "--output_dir", tmp_path / "locked" / "out")), r"cannot be written", 2)


def test_r2_2_web_on_a_port_in_use_says_so_before_loading(tiny_qwen_1k_dir):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, output = cli("web", "--model", tiny_qwen_1k_dir, "--port", port)
    assert_error((code, output), rf"--port {port}: cannot listen on 127.0.0.1:{port} \(Address already in use\)", 2)
    assert "Practice app on" not in output


def test_r2_2_lora_target_modules_naming_no_module_are_refused_before_tokenising(args, monkeypatch):
    from core.data import tokenized
    monkeypatch.setattr(tokenized, "tokenize_file", lambda *a, **k: pytest.fail("tokenised"))
    line = assert_error(cli(*args, "--lora", "--lora_target_modules", "q_proj,nosuch"),
                        r"--lora_target_modules: 'nosuch' names no module of Qwen2ForCausalLM", 2)
    assert "q_proj" in line and "all-linear" in line


def test_r2_2_a_half_written_metrics_line_is_dropped_on_resume_and_reported(args, tmp_path):
    assert cli(*args, "--max_steps", "1", "--save_steps", "1")[0] == 0
    metrics = tmp_path / "out" / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"type": "train", "step": 2, "lo')  # the crash cut the last line short
    code, output = cli(*args, "--max_steps", "1", "--save_steps", "1", "--resume_from_checkpoint", "auto")
    assert code == 0, output[-2000:]
    assert "metrics.jsonl: dropped its last line, cut short by the crash" in output
    assert all(json.loads(line) for line in metrics.read_text().splitlines())
    metrics.write_text('{"type": "train", "st\n' + whole)  # damage before the end is not guessed at
    assert_error(cli(*args, "--max_steps", "1", "--save_steps", "1", "--resume_from_checkpoint", "auto"),
                 r"metrics.jsonl line 1 is damaged", 1)


@pytest.mark.parametrize("command, seed, pattern", [
    ("train", str(2**63), r"--seed must be below 2\*\*63"),
    ("train", str(2**70), r"--seed must be below 2\*\*63"),
    ("chat", str(2**70), r"--seed must be -1 \(a random conversation\) or from 0 to below 2\*\*62"),
    ("chat", "-5", r"--seed must be -1"),
])
def test_r2_2_seeds_out_of_range_are_refused(args, tmp_path, command, seed, pattern):
    argv = [*args, "--seed", seed] if command == "train" else ["chat", "--model", args[3], "--seed", seed]
    assert_error(cli(*argv), pattern, 2)
    assert not (tmp_path / "out").exists()


# r2_3. 'auto' before the first checkpoint starts the run from the beginning

def test_r2_3_auto_with_no_checkpoint_yet_starts_from_the_beginning(args, tmp_path, monkeypatch):
    import core.trainer
    original = core.trainer.train_step

    def stopped_twice(*a, **k):  # a double Ctrl-C in the first step, before any checkpoint exists
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return original(*a, **k)

    monkeypatch.setattr(core.trainer, "train_step", stopped_twice)
    assert_error(cli(*args, "--save_steps", "1", "--max_steps", "2"),
                 r"stopped at once by a second SIGINT while training; no checkpoint was written", 130)
    monkeypatch.setattr(core.trainer, "train_step", original)
    out = tmp_path / "out"
    assert (out / "metrics.jsonl").is_file() and not list(out.glob("checkpoint-*"))
    code, output = cli(*args, "--save_steps", "1", "--max_steps", "2", "--resume_from_checkpoint", "auto")
    assert code == 0, output[-2000:]
    assert f"No checkpoint in {out} yet (the earlier attempt stopped before its first): starting from the " \
           "beginning" in output
    steps = [e["step"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if e["type"] == "train"]
    assert steps == [1, 2]  # one run's lines, not two interleaved


# r2_4. One run at a time in an output directory

def test_r2_4_a_second_run_into_a_locked_output_dir_names_the_holder(args, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from core.train.output_dir import lock_output_dir
        lock_output_dir(Path({str(out)!r}))
        print("locked", flush=True)
        time.sleep(60)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        assert_error(cli(*args), rf"--output_dir .*out is in use by another run \(process {holder.pid}\)", 1)
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert cli(*args, "--max_steps", "1")[0] == 0  # the kernel released the killed holder's lock


def test_r2_4_an_output_dir_inside_the_data_directory_is_refused(args, tmp_path):
    data = tmp_path / "shards"
    data.mkdir()
    shutil.move(tmp_path / "data.jsonl", data / "part-0.jsonl")
    before = snapshot(tmp_path)
    assert_error(cli(*replace_arg(replace_arg(args, "--data_path", data), "--output_dir", data / "run")),
                 r"--output_dir .*shards/run lies inside the input --data_path", 2)
    assert snapshot(tmp_path) == before


# r2_5. Signals anywhere: one line, nothing half-written, stale temporaries removed

def test_r2_5_sigterm_while_tokenising_leaves_one_line_and_no_temporary(args, tmp_path, cache_dir, monkeypatch):
    from core.data.chat_format import ChatEncoder
    sample_data(tmp_path, 20)  # new bytes: tokenised afresh
    stale = cache_dir / "tokens" / ".0123456789abcdef0123.tmp-999999999"
    (stale / "nested").mkdir(parents=True)  # left by a run killed with -9 long ago
    monkeypatch.setattr(ChatEncoder, "encode_many", lambda self, chunk: os.kill(os.getpid(), signal.SIGTERM))
    assert_error(cli(*args), r"interrupted by SIGTERM while tokenising .*data.jsonl; the tokenised cache entry was not "
                             r"written", 128 + signal.SIGTERM)
    assert temporaries(cache_dir / "tokens") == [] and not stale.exists()
    assert not (tmp_path / "out").exists()


def test_r2_5_ctrl_c_in_evaluate_names_it_and_leaves_the_earlier_output(inputs, cache_dir, monkeypatch):
    args = ["evaluate", "--model", inputs / "model", "--data_path", inputs / "data", "--output",
            inputs / "evaluation.jsonl", "--no-replies", "--cache_dir", cache_dir]
    assert cli(*args)[0] == 0
    before = snapshot(inputs)
    from core.use import evaluate

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "perplexity", interrupted)  # while the records are written
    assert_error(cli(*args), r"interrupted by SIGINT while evaluating .*model; .*evaluation.jsonl was not written "
                             r"\(an earlier one is intact\)", 130)
    assert snapshot(inputs) == before


def test_r2_5_a_lost_peer_under_torchrun_is_reported_as_such(monkeypatch):
    from core.cli import report_errors
    monkeypatch.setenv("WORLD_SIZE", "2")

    def collective_fails():
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                           "[127.0.0.1]:29500")
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = report_errors(collective_fails)
    assert_error((code, err.getvalue()), r"a process of this distributed run was lost \(.*Connection closed by peer"
                                         r".*--resume_from_checkpoint auto", 1)


# r2_6. Memory follows the options, not the file

def test_r2_6_a_50_mb_record_tokenises_in_bounded_memory(tmp_path, tiny_qwen_1k_dir):
    data = tmp_path / "big.jsonl"
    data.write_text(json.dumps({"input": "Hi Dana.", "output": "no thanks " * 5_000_000}) + "\n")
    assert data.stat().st_size > 50e6
    script = textwrap.dedent(f"""
        import resource
        from pathlib import Path
        from core.data.tokenized import tokenize_file
        from core.config import FormatOptions
        from core.model.load import load_tokenizer
        tokenizer = load_tokenizer({str(tiny_qwen_1k_dir)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        data = tokenize_file({str(data)!r}, tokenizer, FormatOptions(), 64, Path({str(tmp_path / "cache")!r}), False)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grown // 1024, len(data), len(data.ids), data.summary["format"]["replies_cut"])
        """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mb, sequences, tokens, cut = map(int, result.stdout.split())
    assert sequences == 1 and tokens == 64 and cut == 1
    assert grown_mb < 500, f"peak RSS grew by {grown_mb} MB"


# Round two's unclear messages, each now a better line or a better default

def test_unclear_a_byte_order_mark_is_accepted(args, tmp_path):
    text = (tmp_path / "data.jsonl").read_text()
    (tmp_path / "data.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    code, output = cli("inspect", *args[:6])
    assert code == 0 and "Records: 12" in output, output[-2000:]
    (tmp_path / "run.yaml").write_bytes(b"\xef\xbb\xbflr: 1e-5\n")
    (tmp_path / "data.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([json.loads(line) for line in text.splitlines()])
                                         .encode())
    code, output = cli("inspect", *replace_arg(args[:6], "--data_path", tmp_path / "data.json"),
                       "--config", tmp_path / "run.yaml")
    assert code == 0 and "Records: 12" in output, output[-2000:]


def test_unclear_numbers_are_read_as_the_user_meant(args, tmp_path):
    assert_error(cli(*args, "--lr", "-1e-5"), r"--lr must be positive, got -1e-05", 2)
    (tmp_path / "run.yaml").write_text("lr: 1e-5\nwarmup_ratio: 5e-2\n")
    from core.config import TrainConfig, parse_args
    config = parse_args(["--config", str(tmp_path / "run.yaml"), "--data_path", "x"], TrainConfig)
    assert config.lr == 1e-5 and config.warmup_ratio == 0.05
    (tmp_path / "run.yaml").write_text("lr: fast\n")
    assert_error(cli(*args, "--config", tmp_path / "run.yaml"), r"option 'lr' must be float, got 'fast'", 2)


def test_unclear_a_duplicate_key_is_refused_with_its_name(args, tmp_path):
    (tmp_path / "data.jsonl").write_text('{"input": "Hi", "output": "Yes."}\n{"input": "a", "output": "b", '
                                         '"output": "c"}\n')
    assert_error(cli("inspect", *args[:6]), r"data.jsonl line 2: the key 'output' appears twice in one object", 2)


def test_unclear_special_token_text_is_refused_or_trained_as_text(args, tmp_path, qwen_tokenizer):
    write_jsonl(tmp_path / "data.jsonl", [{"input": "Hi", "output": "Yes."}] * 3 +
                [{"input": "Call <tool_call> now", "output": "No."}])
    assert_error(cli("inspect", *args[:6]), r"data.jsonl line 4: message 0 contains the special token '<tool_call>'.*"
                                            r"--special_tokens text", 2)
    code, output = cli("inspect", *args[:6], "--special_tokens", "text", "--examples", "4", "--color", "never")
    assert code == 0, output[-2000:]
    assert "special-token text in messages: trained as plain text in 1 messages (--special_tokens text)" in output
    assert "Call <tool_call> now" in output
    from core.config import FormatOptions
    from core.data.tokenized import tokenize_file
    tokenizer = qwen_tokenizer
    data = tokenize_file(tmp_path / "data.jsonl", tokenizer, FormatOptions(special_tokens="text"), 512,
                         tmp_path / "cache", progress=False)
    ids = data.sequence(3)[0]
    assert tokenizer.convert_tokens_to_ids("<tool_call>") not in ids.tolist()  # text, never the control token
    write_jsonl(tmp_path / "data.jsonl", [{"input": "Hi", "output": "Yes."}] * 4)
    assert "special-token text in messages: refused (--special_tokens refuse)" in cli("inspect", *args[:6])[1]


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_unclear_a_fifo_or_a_symlink_loop_is_named_as_such(args, tmp_path, kind):
    path = tmp_path / "stream.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(tmp_path / "other.jsonl")
        (tmp_path / "other.jsonl").symlink_to(path)
    pattern = r"is a FIFO \(named pipe\), not a regular file" if kind == "fifo" else r"a loop of symbolic links"
    assert_error(cli(*replace_arg(args, "--data_path", path)), pattern, 2)


def test_unclear_an_over_long_system_prompt_is_blamed_on_the_option(args):
    assert_error(cli("inspect", *args[:6], "--max_length", "64", "--system_prompt", "You are Dana. " * 40),
                 r"^error: --system_prompt leaves no room: .*shorten --system_prompt or raise --max_length", 2)


def test_unclear_evaluate_checks_its_data_before_loading_the_model(tmp_path, monkeypatch, tiny_qwen_1k_dir):
    (tmp_path / "empty.jsonl").write_text("")
    from core.use import evaluate
    monkeypatch.setattr(evaluate, "load_for_chat", lambda *a, **k: pytest.fail("model loaded"))
    assert_error(cli("evaluate", "--model", tiny_qwen_1k_dir, "--data_path", tmp_path / "empty.jsonl", "--output",
                     tmp_path / "e.jsonl"), r"empty.jsonl: file is empty", 2)
    assert not (tmp_path / "e.jsonl").exists()


def test_unclear_save_steps_0_writes_no_checkpoint_even_at_max_steps(args, tmp_path):
    code, output = cli(*args, "--max_steps", "3")
    assert code == 0, output[-2000:]
    out = tmp_path / "out"
    assert not list(out.glob("checkpoint-*")) and (out / "best_model" / "model.safetensors").is_file()
    assert "Done: 3 steps (max_steps)" in output


@pytest.mark.parametrize("command", ["train", "inspect", "chat", "web", "evaluate", "export"])
def test_unclear_help_shows_one_default(command, capsys, monkeypatch):
    from core.cli import main
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "--" in text
    assert not re.search(r"\(default: [^)]*\) \(default:|required \(default", text), text
    assert command == "export" or "(default: ~/.cache/roleplay-tuner)" in text
