"""The loop closes: reps log in to the web app, practise and judge; every message and judgement lands in the team's
store with its author; training reads exactly those judgements; nobody reads what is not theirs; a killed app
loses nothing it acknowledged."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch
from conftest import ROOT, assert_error, cli, make_config, make_tiny_qwen
from test_web import CHROMIUM, free_port

from core.data.files import iter_raw_records
from core.store import open_store
from core.use.web_app import NONE, Practice, WebConfig, who_may_use

PASSWORDS = {"tess": "Trainer-Pass-2026", "ana": "Ana-Pass-20261", "ben": "Ben-Pass-20262"}
FRANK = "Hi Frank, do you have a minute?"
FRANK_SCENARIO = "Frank Marquez, operations director at Oakline Foundation"


def team_store(path):
    """A store with a trainer and two reps."""
    store = open_store(path, create=True)
    for name, role in (("tess", "trainer"), ("ana", "rep"), ("ben", "rep")):
        store.add_user(name, role, PASSWORDS[name])
    return store


def start_web(model, store_path, *options):
    port = free_port()
    process = subprocess.Popen([sys.executable, "train.py", "web", "--model", str(model), "--store", str(store_path),
                                "--scenarios", "data/scenarios.yaml", "--max_new_tokens", "6", "--greedy", "--port",
                                str(port), *map(str, options)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.time() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise AssertionError(f"the web app did not start: {process.communicate()[0][-3000:]}") from None
            time.sleep(0.3)


def log_in(browser, url: str, name: str, password: str):
    """A fresh browser context (its own cookies) on the login page, logged in as `name` through Gradio's /login
    with the context's cookie jar (the form's own script can miss a click made before it is ready)."""
    page = browser.new_context(viewport={"width": 1280, "height": 1200}).new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_selector("input[type='password']", timeout=120_000)  # no app without a login
    assert not page.is_visible("#rep-message textarea")
    assert page.context.request.post(url + "login", form={"username": name, "password": password}).ok
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_selector("#rep-message textarea", timeout=180_000)
    page.wait_for_function(f"document.querySelector('#who').innerText.includes('{name}')", timeout=60_000)
    return page


def practise(page) -> None:
    """Send the rep's line and wait for both models' replies."""
    page.fill("#rep-message textarea", FRANK)
    page.click("#send")
    page.wait_for_function("document.querySelector(\"#chat-b [data-testid='bot']\")?.innerText.trim().length > 0",
                           timeout=60_000)
    time.sleep(0.5)  # the last streamed piece


def judge(page, button: str, said: str, text: str = "") -> None:
    """Click a judgement button and wait until the app acknowledges it (the status says it was recorded)."""
    if text:
        page.fill("#rewrite-text textarea", text)
    before = page.inner_text("#feedback-status")
    page.click(button)
    page.wait_for_function(f"(s => s.includes('Recorded') && s.includes({json.dumps(said)}) && "
                           f"s !== {json.dumps(before)})(document.querySelector('#feedback-status').innerText)",
                           timeout=30_000)


def stored_judgements(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT j.id, u.name, j.kind, j.text FROM judgements j JOIN users u ON u.id = j.user_id "
                          "ORDER BY j.id").fetchall()


@pytest.mark.slow(seconds=40)
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh dev installs it as root)")
def test_two_reps_judge_in_the_browser_and_dpo_and_kto_train_on_exactly_their_judgements(
        tmp_path, tiny_qwen_dir, cache_dir):
    from playwright.sync_api import sync_playwright
    path = tmp_path / "practice.db"
    team_store(path).close()
    other = make_tiny_qwen(tmp_path / "other", seed=1)  # replies that differ
    process, url = start_web(tiny_qwen_dir, path, "--compare_model", other)
    try:
        wrong = urllib.parse.urlencode({"username": "ana", "password": "not-her-password"}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:  # a wrong password is refused
            urllib.request.urlopen(url + "login", data=wrong, timeout=10)
        assert refused.value.code in (400, 401)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            ana = log_in(browser, url, "ana", PASSWORDS["ana"])
            practise(ana)
            judge(ana, "#thumbs-down", "a bad reply")
            judge(ana, "#prefer-b", "model B")
            judge(ana, "#rewrite", "a rewrite", "Not now. Call me after the audit in March.")
            ben = log_in(browser, url, "ben", PASSWORDS["ben"])
            practise(ben)
            judge(ben, "#thumbs-up", "a good reply")
            judge(ben, "#rewrite", "a rewrite", "Who gave you my number?")
            # ben's calls tab shows his own call only; the review of every scenario is a trainer's
            ben.click("#calls-tab-button")
            ben.click("#refresh-calls")
            ben.wait_for_function("document.querySelector('#calls').innerText.includes('ben')")
            assert "ana" not in ben.inner_text("#calls")
            ben.click("#review-tab-button")
            ben.click("#refresh-review")
            ben.wait_for_function("document.querySelector('#review-overview').innerText.includes('Only a trainer')")
            # kill -9 while ben is judging: the click is sent, the app dies before (or after) answering
            ben.click("#practise-tab-button")
            ben.click("#thumbs-down")
            process.kill()
            process.wait(timeout=30)
            browser.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    with sqlite3.connect(path) as db:  # the store opens cleanly: nothing torn
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = stored_judgements(path)
    acknowledged = [("ana", "bad", None), ("ana", "pick", None), ("ana", "rewrite", "Not now. Call me after the audit "
                    "in March."), ("ben", "good", None), ("ben", "rewrite", "Who gave you my number?")]
    assert [row[1:] for row in stored[:5]] == acknowledged
    assert [row[1:] for row in stored[5:]] in ([], [("ben", "bad", None)])  # the one in flight, if it was committed
    store = open_store(path)
    calls = store.calls_for(None)  # each compared model's side is a call (a conversation training reads)
    assert [(c.user, c.scenario, c.model) for c in calls] == [
        (name, FRANK_SCENARIO, model) for name in ("ana", "ben") for model in (str(tiny_qwen_dir), str(other))]
    with sqlite3.connect(path) as db:  # each reply with its model, and the sampling and latency of its writing
        replies = db.execute("SELECT model, sampling, latency_ms, content FROM messages WHERE role = 'assistant'"
                             ).fetchall()
    assert {r[0] for r in replies} == {str(tiny_qwen_dir), str(other)} and len(replies) == 4  # rewrites: judgements
    assert all(json.loads(r[1])["max_new_tokens"] == 6 and r[2] > 0 for r in replies), replies

    url_of = f"sqlite:///{path}"
    pairs = [j for j, _, kind, _ in stored if kind in ("rewrite", "pick")]
    labels = [j for j, _, kind, _ in stored for _ in range(1 + (kind in ("rewrite", "pick")))]
    common = ["--data_path", url_of, "--model_name", tiny_qwen_dir, "--cache_dir", cache_dir, "--eval_split", "0",
              "--batch_size", "2", "--save_steps", "1", "--sample_prompts", "0", "--log_steps", "1", "--no-report",
              "--epochs", "1", "--lr", "1e-3"]
    for objective, expected in (("dpo", pairs), ("kto", labels)):
        out = tmp_path / objective
        code, output = cli("--objective", objective, "--output_dir", out, "--max_steps", "1", *common)
        assert code == 0, output[-3000:]
        saved = json.loads((out / "train_config.json").read_text())["data_path"]
        assert [r["meta"]["judgement"] for _, r in iter_raw_records(saved)] == expected
        assert {r["meta"]["user"] for _, r in iter_raw_records(saved)} == {"ana", "ben"}
    # more practice after the run: the resumed run reads its snapshot, not the new rows
    ana = store.user("ana")
    call = store.open_call(ana, None, "You are Dana.", "tiny", "fp")
    store.add_message(call, 0, "user", "Hello Dana.")
    reply = store.add_message(call, 1, "assistant", "Who is this?")
    store.add_judgement(call, reply, "rewrite", ana, "Not today.")
    from core.train.run_setup import setup
    config = make_config(tmp_path, tiny_qwen_dir, cache_dir, objective="kto", data_path=url_of,
                         output_dir=str(tmp_path / "kto"), batch_size=2, save_steps=1, log_steps=1, eval_split=0,
                         max_steps=1, lr=1e-3, resume_from_checkpoint="auto")
    run = setup(config, log=lambda *_: None)
    assert run.config.data_path == saved and run.state.step == 1
    run.prepared.model.to("meta")
    store.close()


@pytest.fixture
def practice(tmp_path, tiny_qwen_1k_dir):
    team_store(tmp_path / "practice.db").close()
    torch.manual_seed(0)  # sampled replies: the tiny model's greedy reply to these lines is empty
    app = Practice(WebConfig(model=str(tiny_qwen_1k_dir), store=str(tmp_path / "practice.db"), max_new_tokens=6))
    yield app
    app.stop()


def call_as(practice, name: str) -> dict:
    """A page of `name` (as the login gives it) with one call answered and judged."""
    page = practice.login({}, type("Request", (), {"username": name})())
    *_, (chat, _, _) = practice.send(f"Hello, {name} here.", [], [], "You are Dana, IT director.",
                                     practice.config.model, NONE, page)
    assert practice.thumbs(chat, "You are Dana, IT director.", practice.config.model, False, page).startswith(
        "Recorded")
    return page


def test_a_rep_sees_and_downloads_only_their_own_calls_and_a_trainer_reviews_every_scenario(practice):
    import gradio as gr
    ana, ben, tess = (call_as(practice, name) for name in ("ana", "ben", "tess"))
    table, choice = practice.calls(ben)
    (ben_call,) = choice["choices"]
    assert "| ben |" in table and "| ana |" not in table
    (ana_call,) = practice.calls(ana)[1]["choices"]
    with pytest.raises(gr.Error, match="is a rep and may use only their own calls"):
        practice.call_file(ana_call, ben)
    record = json.loads(open(practice.call_file(ben_call, ben)).read())
    assert record["messages"][0]["content"] == "Hello, ben here." and record["judgements"][0]["kind"] == "bad"
    assert len(practice.calls(tess)[1]["choices"]) == 3  # a trainer sees everyone's
    assert practice.review(ben)[0] == "Only a trainer sees the review of every scenario."
    overview, *tabs = practice.review(tess)
    assert "| (no scenario) | 3 | 3 | 0% |" in overview and "accuracy not measured" in overview
    (reviewed,) = [tab for tab in tabs if tab.startswith("### (no scenario)")]
    assert "3 calls" in reviewed and "| role kept |" in reviewed and "Worst-judged replies" in reviewed
    practice.stop()  # the pages' calls end with the app
    assert all(call.ended_at is not None for call in practice.store.calls_for(None))


def test_who_may_use_the_app_depends_on_its_address_and_the_store_s_users(tmp_path, tiny_qwen_1k_dir, capsys):
    empty = Practice(WebConfig(model=str(tiny_qwen_1k_dir), store=str(tmp_path / "empty.db"), host="0.0.0.0"))
    assert_error(cli("web", "--model", tiny_qwen_1k_dir, "--store", tmp_path / "empty.db", "--host", "0.0.0.0",
                     "--port", free_port()),
                 r"--host 0\.0\.0\.0: .* has no user to log in with; add one \(python train\.py team add-user NAME "
                 r"--role trainer --store .*empty\.db\) or, on a trusted network only, pass --no_auth")
    assert who_may_use(WebConfig(model="m", host="0.0.0.0", no_auth=True), empty) is None
    assert "--no_auth: no login; anyone who can reach http://0.0.0.0:7860 practises, judges, and reads and " \
           "downloads every call" in capsys.readouterr().out
    assert who_may_use(WebConfig(model="m", host="localhost"), empty) is None
    assert "running for one local user (no login" in capsys.readouterr().out
    empty.stop()
    team_store(tmp_path / "team.db").close()
    team = Practice(WebConfig(model=str(tiny_qwen_1k_dir), store=str(tmp_path / "team.db")))
    check = who_may_use(WebConfig(model="m"), team)  # users: a login even on loopback
    assert check("ana", PASSWORDS["ana"]) and not check("ana", "wrong-password") and not check("eve", "x")
    for _ in range(5):
        check("ben", "wrong-password")
    assert not check("ben", PASSWORDS["ben"])  # locked after repeated failures, even to the right password
    team.stop()


def test_the_terminal_chat_records_the_call_and_its_judgements_with_their_author(tmp_path, tiny_qwen_1k_dir,
                                                                                   monkeypatch):
    path = tmp_path / "practice.db"
    team_store(path).close()
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORDS["ana"] + "\n"))
    typed = iter(["Hello Dana", "/bad", "/better Not today, thanks.", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    code, output = cli("chat", "--model", tiny_qwen_1k_dir, "--store", path, "--user", "ana", "--system_prompt",
                       "You are Dana.", "--max_new_tokens", "6", "--seed", "0")
    assert code == 0 and "recorded in the team's store" in output and " as ana" in output, output
    assert [row[1:] for row in stored_judgements(path)] == [("ana", "bad", None),
                                                            ("ana", "rewrite", "Not today, thanks.")]
    store = open_store(path)
    (call,) = store.calls_for(store.user("ana"))
    assert call.ended_at is not None and call.messages == 2  # the line and the reply (its rewrite: a judgement)
    assert not (tmp_path / "feedback.jsonl").exists() and not (tiny_qwen_1k_dir.parent / "feedback.jsonl").exists()
    store.close()


def test_a_call_that_goes_on_after_a_rewrite_and_a_regenerated_reply_reads_for_every_objective(practice):
    from core.data.store_reader import pin
    ana, persona, model = call_as(practice, "ana"), "You are Dana, IT director.", practice.config.model
    chat = list(ana["session"].sides[0].turns)
    _, status, _ = practice.rewrite(chat, persona, model, "Not today, thanks.", ana)
    assert status.startswith("Recorded")
    *_, (chat, _, _) = practice.send("Just five minutes?", ana["session"].sides[0].turns, [], persona, model, NONE, ana)
    assert practice.thumbs(chat, persona, model, True, ana).startswith("Recorded")
    *_, (again, _) = practice.regenerate(chat, [], persona, model, NONE, ana)  # a reply taken back, a new one
    assert practice.thumbs(again, persona, model, False, ana).startswith("Recorded")
    url = f"sqlite:///{practice.store.url.database}"
    for view in ("sft", "dpo", "kto"):  # every objective reads (no two bot turns in a row anywhere)
        assert list(iter_raw_records(pin(url, view)))
    calls = [r for _, r in iter_raw_records(pin(url, "sft")) if r["messages"][1]["content"] == "Hello, ana here."]
    assert len(calls) == 2  # the call, and its fresh start after the regenerated reply
    for sft in calls:
        assert [m["role"] for m in sft["messages"]] == ["system", "user", "assistant", "user", "assistant"]
        assert sft["messages"][2]["content"] == "Not today, thanks."  # the rewrite stands in
    labels = [r for _, r in iter_raw_records(pin(url, "kto")) if r["meta"]["user"] == "ana"]
    assert [(r["meta"]["kind"], r["label"], len(r["prompt"])) for r in labels] == [
        ("bad", False, 2), ("rewrite", True, 2), ("rewrite", False, 2), ("good", True, 4), ("bad", False, 4)]
    assert all(r["prompt"][-1]["role"] == "user" for r in labels)
