"""Every fault a user can cause ends in one line, a non-zero exit and an intact disk (issue: keep the promise).

Each test is one reproduction from the fault report, numbered as there, run through the command
line's own entry point (`core.cli.main`) in this process, so that what is checked is what a user
sees: the exit code, exactly one `error:` line, no traceback, and what is on disk afterwards.
"""

import json
import os
import re
import shutil
import signal

import pytest
import torch
from conftest import assert_error, cli, make_config, sample_data, write_jsonl

from core.errors import TrainingStopped
from core.train.run_setup import setup
from core.trainer import fit


@pytest.fixture
def args(tmp_path, tiny_qwen_dir, cache_dir):
    """Command-line arguments of a short run of the tiny model (data written to tmp_path/data.jsonl)."""
    sample_data(tmp_path, 12)
    return ["--data_path", tmp_path / "data.jsonl", "--model_name", tiny_qwen_dir, "--cache_dir", cache_dir,
            "--output_dir", tmp_path / "out", "--batch_size", "2", "--log_steps", "1", "--save_steps", "0",
            "--eval_split", "0.25", "--lr", "1e-3", "--sample_prompts", "0"]


def temporaries(directory) -> list[str]:
    return sorted(p.name for p in directory.glob(".*.tmp-*")) if directory.is_dir() else []


# 1. A stop in the final step --------------------------------------------------------------------

def test_1_a_stop_during_the_last_step_is_finished_by_the_resumed_run(tmp_path, tiny_qwen_dir, cache_dir):
    write_jsonl(tmp_path / "data.jsonl", [{"input": f"Hi {i}", "output": f"Go away {i}."} for i in range(4)])
    config = make_config(tmp_path, tiny_qwen_dir, cache_dir, batch_size=1, eval_split=0.25, save_steps=0)
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
    code, output = cli("--data_path", config.data_path, "--model_name", tiny_qwen_dir, "--cache_dir", cache_dir,
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
                 r"could not write .*checkpoint-4: .*; earlier checkpoints are intact", 1)
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

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_qwen_dir, cache_dir):
    """A run with checkpoint-2 and checkpoint-4, to be copied and damaged."""
    tmp = tmp_path_factory.mktemp("finished")
    sample_data(tmp, 12)
    code, output = cli("--data_path", tmp / "data.jsonl", "--model_name", tiny_qwen_dir, "--cache_dir", cache_dir,
                       "--output_dir", tmp / "out", "--batch_size", "2", "--save_steps", "2", "--max_steps", "4",
                       "--eval_split", "0.25", "--lr", "1e-3", "--sample_prompts", "0")
    assert code == 0, output[-2000:]
    return tmp


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
                                                                                tiny_qwen_dir, damage):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    out = tmp_path / "out"
    harm, pattern = DAMAGE[damage]
    harm(out / "checkpoint-4")
    base = ["--data_path", tmp_path / "data.jsonl", "--model_name", tiny_qwen_dir, "--cache_dir", cache_dir,
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
    assert_error(cli(*args, "--save_steps", "2"), r"stopped at once by a second SIGINT; the last complete "
                                                  r"checkpoint is intact", 128 + signal.SIGINT)
    out = tmp_path / "out"
    assert temporaries(out) == [] and not (out / "checkpoint-2").exists()


def test_9_ctrl_c_during_tokenisation_gives_one_line(args, tmp_path, monkeypatch, cache_dir):
    from core.data.chat_format import ChatEncoder

    def interrupted(self, conversations):
        os.kill(os.getpid(), signal.SIGINT)
    sample_data(tmp_path, 30)  # new bytes: tokenised afresh
    monkeypatch.setattr(ChatEncoder, "encode_many", interrupted)
    assert_error(cli(*args), r"interrupted before training started; no checkpoint was written", 130)
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
