"""Training's faults of round three (issue 31): each ends in one `error:` line, a non-zero exit and an intact
disk, found before the expensive work; run through the command line's entry point (`core.cli.main`).
"""

import hashlib
import os
import re
import shutil
import signal
import time

import pytest
import torch
from conftest import assert_error, cli, write_jsonl


def replace_arg(args, flag, value):
    i = args.index(flag)
    return [*args[:i + 1], value, *args[i + 2:]]


def snapshot(root) -> dict[str, str]:
    """Every path under `root` (links as their targets, unfollowed) with its file's sha256: to compare."""
    return {str(p.relative_to(root)): (f"-> {p.readlink()}" if p.is_symlink() else
                                       hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model's weights are loaded: the refusal must come before."""
    from core.train import run_setup
    monkeypatch.setattr(run_setup, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))


# Defect 4: "This is a bug" for a user's fault --------------------------------------------------------

@pytest.mark.parametrize("where, pattern", [
    ("loop", r"--output_dir .*loop: .*loop is a loop of symbolic links; fix it or choose another path"),
    ("loop/run", r"--output_dir .*loop/run: .*loop is a loop of symbolic links"),
    ("broken/d/run", r"--output_dir .*: .*broken is a broken symbolic link; fix it or choose another path")])
def test_4_an_output_dir_through_a_symlink_loop_or_a_broken_link_is_one_line_before_the_model_loads(
        args, tmp_path, no_model_load, where, pattern):
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    before = snapshot(tmp_path)
    assert_error(cli(*replace_arg(args, "--output_dir", tmp_path / where)), pattern, 2)
    assert snapshot(tmp_path) == before


@pytest.fixture
def unsafe_model(tmp_path, tiny_qwen_1k_dir):
    """The tiny model with its weights as a pickle that also carries an object whose loading writes a file."""
    from safetensors.torch import load_file
    model = tmp_path / "unsafe"
    shutil.copytree(tiny_qwen_1k_dir, model)
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    weights["payload"] = Payload(str(tmp_path / "ran"))
    torch.save(weights, model / "pytorch_model.bin")
    return model


class Payload:
    """Loading it (unpickling) would create the file `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("command", ["train", "export"])
def test_4_a_model_of_unsafe_pickled_weights_is_refused_in_one_line_and_never_run(args, tmp_path, unsafe_model,
                                                                                   command):
    before = snapshot(tmp_path)
    arguments = replace_arg(args, "--model_name", unsafe_model) if command == "train" else \
        ["export", "--model", unsafe_model, "--output_dir", tmp_path / "out"]
    assert_error(cli(*arguments), r"^error: model .*unsafe: .*pytorch_model.bin holds Python objects besides "
                                  r"tensors \(Unsupported global: GLOBAL [\w.]*open\b.*\), which could run code "
                                  r".* refused; .*save it as safetensors", 2)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
    assert snapshot(tmp_path) == before


# Unclear: preference records where conversations are read, and evaluate's self-play -------------------

PAIRS = [{"messages": [{"role": "user", "content": f"Hi, this is Sam from Acme, call {i}."}],
          "chosen": f"I'm busy. What is it about? ({i})", "rejected": f"Sure, tell me everything! ({i})"}
         for i in range(4)]
TRL_LABELLED = [{"prompt": [{"role": "user", "content": "Got a minute?"}],
                 "completion": [{"role": "assistant", "content": "No."}], "label": True}]


@pytest.mark.parametrize("records, key", [(PAIRS, "chosen"), (TRL_LABELLED, "completion")], ids=["pair", "trl"])
@pytest.mark.parametrize("command", ["train", "inspect", "evaluate"])
def test_unclear_a_preference_file_read_as_conversations_names_objective(args, tmp_path, no_model_load, records,
                                                                          key, command):
    write_jsonl(tmp_path / "data.jsonl", records)
    arguments = {"train": args, "inspect": ["inspect", *args[:6]],
                 "evaluate": ["evaluate", "--model", args[3], "--conversations", tmp_path / "data.jsonl",
                              "--output", tmp_path / "out.jsonl", "--cache_dir", args[5]]}[command]
    before = snapshot(tmp_path)
    line = assert_error(cli(*arguments), rf"data.jsonl line 1: '{key}' makes this a preference record .*pass "
                                         r"--objective dpo \(pairs\) or --objective kto", 2)
    assert "--allow_extra_keys" not in line
    assert snapshot(tmp_path) == before


def test_unclear_evaluate_conversations_with_nothing_to_play_or_beside_data_path_is_refused(args, tmp_path,
                                                                                           monkeypatch):
    from core.use import evaluate
    monkeypatch.setattr(evaluate, "load_for_chat", lambda *a, **k: pytest.fail("model loaded"))
    bot_only = write_jsonl(tmp_path / "bot_only.jsonl", [{"messages": [
        {"role": "system", "content": "You are Dana."}, {"role": "assistant", "content": "Hello? Who is this?"}]}])
    evaluate_args = ["evaluate", "--model", args[3], "--cache_dir", args[5]]
    before = snapshot(tmp_path)
    assert_error(cli(*evaluate_args, "--conversations", bot_only, "--output", tmp_path / "e.jsonl"),
                 r"--conversations .*bot_only.jsonl: none of its 1 conversations has a user turn .*nothing to play", 2)
    assert_error(cli(*evaluate_args, "--conversations", args[1], "--data_path", args[1], "--output",
                     tmp_path / "e.jsonl"), r"--data_path .* and --conversations .* pass one of them", 2)
    assert_error(cli(*evaluate_args, "--conversations", args[1], "--output", args[1]),
                 r"--output .*data.jsonl is also the input --conversations; .*choose another --output", 2)
    assert snapshot(tmp_path) == before


def test_unclear_pairs_made_identical_by_max_length_are_counted_and_refused_when_nothing_else_is_left(args,
                                                                                                        tmp_path):
    common = "Well, I am rather busy right now, but go on, what is it about exactly? " * 3
    pairs = [{"messages": [{"role": "system", "content": "You are Dana."}, {"role": "user", "content": f"Hi {i}"}],
              "chosen": common + "No.", "rejected": common + "Yes."} for i in range(4)]
    write_jsonl(tmp_path / "data.jsonl", pairs)
    dpo = [*args, "--objective", "dpo", "--max_length", "64"]
    code, output = cli("inspect", *dpo[:6], *dpo[-4:], "--examples", "0")
    assert code == 0 and "WARNING: 4 of 4 pairs have the same chosen and rejected sequence once cut to " \
                         "--max_length 64" in output, output
    assert_error(cli(*dpo), r"data.jsonl: all 4 pairs are the same sequence for chosen and rejected once cut to "
                            r"--max_length 64 .*--objective dpo would learn nothing; raise --max_length", 2)
    assert not (tmp_path / "out").exists()
    write_jsonl(tmp_path / "data.jsonl", pairs[:3] + [{**pairs[3], "rejected": "Yes."}])  # one pair stays apart
    code, output = cli("inspect", *dpo[:6], *dpo[-4:], "--examples", "0")
    assert code == 0 and "WARNING: 3 of 4 pairs have the same chosen" in output, output


@pytest.mark.parametrize("beta", ["1e300", "11", "0", "-0.1", "nan", "inf"])
@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_unclear_beta_outside_its_range_is_refused_with_the_range_before_anything_loads(args, tmp_path, beta,
                                                                                      objective):
    write_jsonl(tmp_path / "data.jsonl", PAIRS)
    assert_error(cli(*args, "--objective", objective, "--beta", beta),
                 r"--beta (must be in \(0, 10\] \(typical: 0.01 to 0.5.*got|must be a finite number)", 2)
    assert not (tmp_path / "out").exists()


def test_unclear_the_dpo_reference_pass_says_what_it_computes_and_shows_progress(args, tmp_path):
    write_jsonl(tmp_path / "data.jsonl", PAIRS)
    code, output = cli(*args, "--objective", "dpo", "--eval_split", "0", "--max_steps", "1", "--no-report")
    assert code == 0, output[-2000:]
    assert "Reference log-probabilities: each of the 8 replies' log-probability under the model as it is before " \
           "training" in output
    assert re.search(r"reference log-probabilities \(the model before training\): 100%.*8/8", output), output


def test_unclear_sigterm_while_a_compile_run_compiles_its_first_step_stops_at_once(args, tmp_path, monkeypatch):
    """torch.compile on the CPU takes minutes in the first step; a SIGTERM there ends the run within seconds
    (nothing is done yet to save). The compiler is stood in for by a first step that takes 60 s."""
    from core.train import step
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    first = step.accumulate_gradients

    def compiling(run, *a, **k):
        if run.state.step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)
        return first(run, *a, **k)
    monkeypatch.setattr(step, "accumulate_gradients", compiling)
    started = time.monotonic()
    assert_error(cli(*args, "--compile", "--eval_split", "0", "--no-report"),
                 r"^error: interrupted by SIGTERM while training; no checkpoint was written", 128 + signal.SIGTERM)
    assert time.monotonic() - started < 50
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "best_model").exists()
