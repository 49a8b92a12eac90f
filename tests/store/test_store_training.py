"""Training reads the store: the records are exactly the judgements (or calls), read from a snapshot that a
resumed run reads again however many rows were added since; `inspect` counts what the store holds."""

from __future__ import annotations

import json

import pytest
from conftest import assert_error, cli, make_config

from core.data.files import iter_raw_records, source_sha256
from core.data.store_reader import pin
from core.errors import DataError
from core.store import open_store

PASSWORD = "Sesame-Open-4821"


def practise(store, rep, n: int, scenario: str = "Frank") -> list[tuple[int, str]]:
    """`n` calls of `rep`, each judged by the rep: thumbs, rewrites and picks in turn. (judgement id, kind)."""
    made = []
    for i in range(n):
        call = store.open_call(rep, scenario, f"You are Frank, CFO number {i}.", "tiny", "fp")
        store.add_message(call, 0, "user", f"Hello Frank, call {i} from {rep.name}.")
        reply = store.add_message(call, 1, "assistant", f"Who is this? ({i})", model="tiny")
        kind = ("good", "bad", "rewrite", "pick")[i % 4]
        extra = {"rewrite": {"text": f"Not interested, {rep.name}. ({i})"},
                 "pick": {"other_text": f"Sure, tell me more! ({i})", "other_model": "base"}}.get(kind, {})
        made.append((store.add_judgement(call, reply, kind, rep, **extra), kind))
        store.close_call(call)
    return made


def test_a_pinned_snapshot_reads_the_same_records_after_more_rows_on_both_backends(store_url):
    store = open_store(store_url, create=True)
    rep = store.add_user("rep1", "rep", None)
    made = practise(store, rep, 8)
    pinned = pin(store_url, "dpo")
    records = [record for _, record in iter_raw_records(pinned)]
    assert [r["meta"]["judgement"] for r in records] == [j for j, kind in made if kind in ("rewrite", "pick")]
    sha = source_sha256(pinned)
    practise(store, rep, 4)  # more practice after the run started
    assert [record for _, record in iter_raw_records(pinned)] == records and source_sha256(pinned) == sha
    assert len(list(iter_raw_records(pin(store_url, "dpo")))) == 6  # a new run reads the new rows too
    labels = [r for _, r in iter_raw_records(pin(store_url, "kto"))]
    assert sum(r["label"] for r in labels) == 3 + 6 and sum(not r["label"] for r in labels) == 3 + 6
    with store.engine.begin() as c:  # a reply the snapshot read (call 3's, rewritten) is changed
        c.exec_driver_sql("UPDATE messages SET content = 'Hm?' WHERE id = 6")
    with pytest.raises(DataError, match="no longer read as they did when the run started"):
        source_sha256(pinned)


def test_a_store_that_is_not_there_is_one_error_line(tmp_path, tiny_qwen_1k_dir):
    missing = tmp_path / "missing.db"
    assert_error(cli("inspect", "--objective", "dpo", "--data_path", f"sqlite:///{missing}", "--model_name",
                     tiny_qwen_1k_dir), r"--data_path: .*missing.db: no store there")
    assert not missing.exists()


def test_dpo_trains_on_exactly_the_judgements_of_two_reps_and_a_resumed_run_reads_its_snapshot(
        tmp_path, tiny_qwen_1k_dir, cache_dir):
    from core.train.run_setup import setup
    url = f"sqlite:///{tmp_path / 'practice.db'}"
    store = open_store(url, create=True)
    made = practise(store, store.add_user("rep1", "rep", PASSWORD), 8) + \
        practise(store, store.add_user("rep2", "rep", PASSWORD), 8, scenario="Brenda")
    out = tmp_path / "run"
    options = ["--objective", "dpo", "--data_path", url, "--model_name", tiny_qwen_1k_dir, "--cache_dir", cache_dir,
               "--output_dir", out, "--batch_size", "2", "--epochs", "1", "--save_steps", "2", "--log_steps", "1",
               "--eval_split", "0.25", "--sample_prompts", "0", "--lr", "1e-3", "--no-report"]
    code, output = cli(*options, "--max_steps", "2")
    assert code == 0, output[-3000:]
    saved = json.loads((out / "train_config.json").read_text())["data_path"]
    assert saved.startswith(url + "#preference@16,32,16:")
    pairs = [j for j, kind in made if kind in ("rewrite", "pick")]
    assert [r["meta"]["judgement"] for _, r in iter_raw_records(saved)] == pairs
    practise(store, store.user("rep1"), 4)  # rows added after the run started ...
    config = make_config(tmp_path, tiny_qwen_1k_dir, cache_dir, objective="dpo", data_path=url, output_dir=str(out),
                         batch_size=2, save_steps=2, log_steps=1, eval_split=0.25, max_steps=2, lr=1e-3,
                         resume_from_checkpoint="auto")
    run = setup(config, log=lambda *_: None)
    assert run.config.data_path == saved and run.state.step == 2  # ... are not mixed into the resumed run
    assert run.data.sequences.summary["preferences"]["pairs"] == len(pairs)
    run.prepared.model.to("meta")


def test_kto_and_inspect_read_the_thumbs_and_pairs_and_say_what_the_store_holds(tmp_path, tiny_qwen_1k_dir,
                                                                                  cache_dir):
    url = f"sqlite:///{tmp_path / 'practice.db'}"
    store = open_store(url, create=True)
    practise(store, store.add_user("rep1", "rep", None), 8)
    code, output = cli("inspect", "--objective", "kto", "--data_path", url, "--model_name", tiny_qwen_1k_dir,
                       "--cache_dir", cache_dir, "--examples", "1")
    assert code == 0, output[-3000:]
    assert "8 calls, 16 messages, 8 judgements (good 2, bad 2, rewrite 2, pick 2)" in output
    assert "Snapshot: the kto records of calls up to id 8, messages up to 16, judgements up to 8" in output
    assert "Records: 12 (labelled replies 12)" in output and "6 good and 6 bad replies in all" in output
    code, output = cli("inspect", "--objective", "sft", "--data_path", url, "--model_name", tiny_qwen_1k_dir,
                       "--cache_dir", cache_dir, "--examples", "1")
    assert code == 0, output[-3000:]
    assert "Snapshot: the sft records" in output
