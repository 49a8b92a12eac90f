"""`train.py team`: the workflow in commands, refusals that record nothing, secrets never printed or stored in
clear, and bad input ending in one `error:` line with nothing written."""

from __future__ import annotations

import io
import json
import socket
import sqlite3

import pytest
from conftest import assert_error, cli

from core.store import open_store
from core.use import feedback
from core.use.practice import Judgement

PASSWORDS = {"tess": "Trainer-Pass-77", "rep1": "Rep-One-Pass-11", "rep2": "Rep-Two-Pass-22"}


def typed(monkeypatch, *lines):
    """What the user types on stdin (a script's way to give a password)."""
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))


def team(monkeypatch, url, *args, stdin=()):
    typed(monkeypatch, *stdin)
    return cli("team", *args, "--store", url)


def test_the_team_workflow_and_its_refusals(store_url, tmp_path, monkeypatch):
    said = []
    run = lambda *args, stdin=(): said.append(team(monkeypatch, store_url, *args, stdin=stdin)) or said[-1]  # noqa
    assert run("init")[0] == 0
    for name, role in (("tess", "trainer"), ("rep1", "rep"), ("rep2", "rep")):
        code, output = run("add-user", name, "--role", role, stdin=[PASSWORDS[name]])
        assert code == 0 and f"Added {role} '{name}'" in output
    code, output = run("add-key", "rep1", "--label", "laptop")
    key = output.strip().splitlines()[-1]
    assert code == 0 and key.startswith("rpt_")
    (tmp_path / "scenarios.yaml").write_text("- name: Frank\n  system: You are Frank, a CFO.\n  difficulty: hard\n")
    assert run("import-scenarios", tmp_path / "scenarios.yaml")[1].startswith("Scenarios from")
    store = open_store(store_url)
    for name in ("rep1", "rep2"):
        user = store.user(name)
        call = store.open_call(user, "Frank", "You are Frank, a CFO.", "tiny", "fp")
        store.add_message(call, 0, "user", f"Hi, {name} here.")
        reply = store.add_message(call, 1, "assistant", "What do you want?")
        store.add_judgement(call, reply, "rewrite", user, text=f"Make it quick, {name}.")
        store.add_judgement(call, reply, "bad", user)
    before = store.counts()
    # A rep reads only their own calls; a wrong password reads nothing; neither writes a file.
    refused = tmp_path / "refused.jsonl"
    assert_error(run("export", "--format", "preference", "--output", refused, "--as", "rep1", "--user", "rep2",
                     stdin=[PASSWORDS["rep1"]]), r"'rep1' is a rep and may .*only their own")
    assert_error(run("export", "--format", "preference", "--output", refused, "--as", "rep1", stdin=["wrong-pass"]),
                 r"wrong user name or password for 'rep1'")
    assert not refused.exists() and store.counts() == before
    own = tmp_path / "own.jsonl"
    assert run("export", "--format", "preference", "--output", own, "--as", "rep1", stdin=[PASSWORDS["rep1"]])[0] == 0
    pairs = [json.loads(line) for line in own.read_text().splitlines()]
    assert [(p["chosen"][0]["content"], p["meta"]["judge"]) for p in pairs] == [("Make it quick, rep1.", "rep1")]
    everyone = tmp_path / "sft.jsonl"
    assert run("export", "--format", "sft", "--output", everyone, "--as", "tess", stdin=[PASSWORDS["tess"]])[0] == 0
    conversations = [json.loads(line)["messages"] for line in everyone.read_text().splitlines()]
    assert [c[-1]["content"] for c in conversations] == ["Make it quick, rep1.", "Make it quick, rep2."]
    code, output = run("summary", "--as", "tess", stdin=[PASSWORDS["tess"]])
    assert "Frank: 2 calls, 2 replies; 0% judged realistic (good 0, bad 2, rewrites 2, picks 0)" in output
    # A revoked key and a removed user let nobody in.
    assert run("revoke-key", key[:12])[0] == 0 and store.user_for_key(key) is None
    assert run("remove-user", "rep2")[0] == 0 and store.check_password("rep2", PASSWORDS["rep2"]) is None
    assert "rep2\trep\tremoved" in run("users")[1] and "revoked" in run("keys")[1]
    # Secrets: the key was shown once, at its creation; no password was ever printed; none is in the file.
    printed = "".join(output for _, output in said)
    assert printed.count(key) == 1 and not any(p in printed for p in PASSWORDS.values())
    if store_url.startswith("sqlite"):
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("practice.db*"))
        assert not any(s.encode() in raw for s in [key, *PASSWORDS.values()])


def test_feedback_files_import_once_and_export_as_the_pairs_they_held(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'practice.db'}"
    file = tmp_path / "feedback.jsonl"
    chat = [{"role": "system", "content": "You are Ann."}, {"role": "user", "content": "Hi Ann."},
            {"role": "assistant", "content": "Who is this?"}]
    recorder = feedback.FeedbackFile(file)  # the file the practice apps append to (core/use/practice.py's schema)
    for judgement in (Judgement("good", chat[:2], chat[2]["content"], "m", "web"),
                      Judgement("rewrite", chat[:2], chat[2]["content"], "m", "chat", text="Not now, I'm busy."),
                      Judgement("pick", chat[:2], "Who is this?", "m", "web", other="Hello!", other_model="base")):
        recorder.judgement(None, judgement)
    assert team(monkeypatch, url, "init")[0] == 0
    assert "Imported 3 judgements" in team(monkeypatch, url, "import-feedback", file)[1]
    code, output = team(monkeypatch, url, "import-feedback", file)
    assert code == 0 and "Imported 0 judgements" in output and "3 imported before" in output
    out = tmp_path / "pairs.jsonl"
    assert team(monkeypatch, url, "export", "--format", "preference", "--output", out)[0] == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    original = [json.loads(line) for line in file.read_text().splitlines() if "chosen" in line]
    assert [(e["prompt"], e["chosen"][0]["content"], e["rejected"][0]["content"]) for e in exported] == \
        [(o["messages"], o["chosen"], o["rejected"]) for o in original]
    assert open_store(url).counts()["by_kind"] == {"good": 1, "bad": 0, "rewrite": 1, "pick": 1}


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, postgres_url):
    # A server that cannot be reached (a closed port).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert_error(team(monkeypatch, f"postgresql+psycopg://u@127.0.0.1:{port}/x", "users"),
                 rf"postgresql\+psycopg://u@127.0.0.1:{port}/x: cannot reach the database server")
    # A corrupt SQLite file: refused, untouched, no journal beside it.
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    assert_error(team(monkeypatch, corrupt, "users"), r"corrupt.db: not an SQLite database, or a corrupt one")
    assert corrupt.read_bytes() == b"SQLite format 3\0" + b"\xff" * 4000 and len(list(tmp_path.iterdir())) == 1
    # A store that does not exist: not created by a command that only reads.
    assert_error(team(monkeypatch, tmp_path / "missing.db", "users"), r"missing.db: no store there; create it with")
    assert not (tmp_path / "missing.db").exists()
    # A database of a newer schema, on both backends.
    for url in (f"sqlite:///{tmp_path / 'newer.db'}", postgres_url):
        assert team(monkeypatch, url, "init")[0] == 0
        with open_store(url).engine.begin() as c:
            c.exec_driver_sql("UPDATE alembic_version SET version_num = '0099'")
        assert_error(team(monkeypatch, url, "users"), r"made by a newer roleplay-tuner \(schema 0099")
    # A scenario file with an unknown key: nothing imported, not even the good entries before it.
    url = f"sqlite:///{tmp_path / 'practice.db'}"
    team(monkeypatch, url, "init")
    scenarios = tmp_path / "scenarios.yaml"
    scenarios.write_text("- name: Ann\n  system: You are Ann.\n- name: Bob\n  sytem: You are Bob.\n")
    assert_error(team(monkeypatch, url, "import-scenarios", scenarios), r"scenarios.yaml entry 1: unknown key 'sytem'")
    assert open_store(url).scenarios() == []
    with sqlite3.connect(tmp_path / "practice.db") as c:
        assert c.execute("SELECT count(*) FROM scenarios").fetchone() == (0,)


@pytest.mark.parametrize("flag", ["--password", "--password=x"])
def test_passwords_are_never_flags(tmp_path, monkeypatch, flag):
    url = f"sqlite:///{tmp_path / 'practice.db'}"
    team(monkeypatch, url, "init")
    assert_error(team(monkeypatch, url, "add-user", "ann", "--role", "rep", flag), r"unrecognized arguments")
    assert open_store(url).users() == []
