"""Feedback where people practise: judgements become complete lines of a feedback file that preference tuning
trains on, from the terminal chat (/good, /bad, /better) and the web app (thumbs, rewrite, the better of two)."""

import json
import multiprocessing
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest
from conftest import ROOT, cli, make_tiny_qwen
from test_chat import Terminal
from test_web import CHROMIUM, free_port, open_app_page

from core.config import FormatOptions
from core.data.preference import count_usable
from core.use import feedback


@contextmanager
def web_app(model, *options):
    """`train.py web` on a free port, until the block ends."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "train.py", "web", "--model", str(model), "--scenarios",
                                "data/scenarios.yaml", "--max_new_tokens", "6", "--greedy", "--port", str(port),
                                *map(str, options)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.time() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.time() < deadline, process.stdout.read()
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def hammer(path, worker: int) -> None:
    record = {"messages": [{"role": "user", "content": f"worker {worker} " + "x" * 5000}], "completion": "No.",
              "label": bool(worker % 2)}
    for _ in range(50):
        feedback.append_line(path, record)


def test_two_writers_at_once_never_interleave_or_lose_a_line(tmp_path):
    path = tmp_path / "feedback.jsonl"
    processes = [multiprocessing.Process(target=hammer, args=(path, w)) for w in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    lines = read_lines(path)  # every line parses: none was cut or mixed with another
    assert len(lines) == 100 and sorted({line["messages"][0]["content"][:8] for line in lines}) == \
        ["worker 0", "worker 1"]


def test_terminal_judgements_are_appended_and_train_with_dpo_and_kto(tmp_path, tiny_qwen_1k_dir, cache_dir):
    path = tmp_path / "feedback.jsonl"
    terminal = Terminal([sys.executable, "train.py", "chat", "--model", str(tiny_qwen_1k_dir), "--max_new_tokens",
                         "6", "--system_prompt", "You are Dana, IT director.", "--greedy", "--feedback_file",
                         str(path)])
    terminal.read_until("rep> ")
    assert "Nothing recorded: there is no reply to judge yet" in terminal.send("/good")
    terminal.send("Hi Dana, do you have a minute?")
    assert "Recorded a good reply" in terminal.send("/good")
    terminal.send("We cut payroll time in half.")
    assert "Recorded a bad reply" in terminal.send("/bad")
    terminal.send("Can I send you a proposal?")
    assert "Recorded a better reply" in terminal.send("/better Send it, but budget is frozen until Q3.")
    terminal.send("/quit", until="")
    assert terminal.process.wait(timeout=60) == 0

    good, bad, pair = read_lines(path)
    persona = {"role": "system", "content": "You are Dana, IT director."}
    assert good["label"] is True and good["messages"] == [persona, {"role": "user",
                                                                   "content": "Hi Dana, do you have a minute?"}]
    assert bad["label"] is False and bad["messages"][-1]["content"] == "We cut payroll time in half."
    assert len(bad["messages"]) == 4 and bad["completion"].strip()
    assert pair["chosen"] == "Send it, but budget is frozen until Q3." and pair["rejected"].strip()
    assert pair["messages"][-1]["content"] == "Can I send you a proposal?" and len(pair["messages"]) == 6
    assert all(line["meta"]["model"] == str(tiny_qwen_1k_dir) and line["meta"]["source"] == "chat" and
               line["meta"]["time"] for line in (good, bad, pair))
    (sft,) = read_lines(feedback.sft_file(path))
    assert sft["messages"] == pair["messages"] + [{"role": "assistant", "content": pair["chosen"]}]
    assert count_usable(path, "dpo", FormatOptions()) == {"pair": 1, "label": 2, "sft": 0}

    for objective in ("dpo", "kto"):
        out = tmp_path / objective
        code, output = cli("train", "--objective", objective, "--data_path", path, "--model_name", tiny_qwen_1k_dir,
                           "--cache_dir", cache_dir, "--output_dir", out, "--eval_split", "0", "--epochs", "1",
                           "--sample_prompts", "0", "--log_steps", "1", "--no-report")
        assert code == 0, output[-2000:]
        steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps and "reward_accuracy" in steps[0] and (out / "best_model" / "model.safetensors").is_file()


@pytest.mark.slow(seconds=24)
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh dev installs it as root)")
def test_browser_thumbs_rewrite_and_pick_are_recorded_and_train_with_dpo(tmp_path, tiny_qwen_dir, cache_dir):
    from playwright.sync_api import sync_playwright
    other = make_tiny_qwen(tmp_path / "other", seed=1)  # a second model, so that the two replies differ
    path = tmp_path / "feedback.jsonl"
    with web_app(tiny_qwen_dir, "--compare_model", other, "--feedback_file", path) as url, \
            sync_playwright() as playwright:
        browser, page = open_app_page(playwright, url, height=1200)
        page.fill("#rep-message textarea", "Hi Frank, do you have a minute?")
        page.click("#send")
        page.wait_for_function("document.querySelector(\"#chat-b [data-testid='bot']\")?.innerText.trim().length > 0",
                               timeout=60_000)
        time.sleep(1)  # the last streamed piece
        status = "#feedback-status"
        page.click("#thumbs-down")
        page.wait_for_function(f"document.querySelector('{status}').innerText.includes('a bad reply')")
        page.click("#prefer-b")
        page.wait_for_function(f"document.querySelector('{status}').innerText.includes('model B')")
        page.fill("#rewrite-text textarea", "Not now. Call me after the audit in March.")
        page.click("#rewrite")
        page.wait_for_function(f"document.querySelector('{status}').innerText.includes('a rewrite')")
        page.wait_for_function("document.querySelector(\"#chat-a [data-testid='bot']\").innerText.includes('audit')")
        browser.close()

    bad, picked, rewritten = read_lines(path)
    context = bad["messages"]
    assert "Frank Marquez" in context[0]["content"] and context[1:] == [
        {"role": "user", "content": "Hi Frank, do you have a minute?"}]
    assert bad["label"] is False and bad["completion"].strip() and bad["meta"]["source"] == "web"
    assert picked["messages"] == context and picked["meta"]["model"] == str(other)
    assert picked["meta"]["other_model"] == str(tiny_qwen_dir) and picked["chosen"] != picked["rejected"]
    assert picked["rejected"] == bad["completion"]  # model A's reply lost to model B's
    assert rewritten["messages"] == context and rewritten["rejected"] == bad["completion"]
    assert rewritten["chosen"] == "Not now. Call me after the audit in March."
    (sft,) = read_lines(feedback.sft_file(path))
    assert sft["messages"] == context + [{"role": "assistant", "content": rewritten["chosen"]}]
    out = tmp_path / "dpo"
    code, output = cli("train", "--objective", "dpo", "--data_path", path, "--model_name", tiny_qwen_dir,
                       "--cache_dir", cache_dir, "--output_dir", out, "--eval_split", "0", "--epochs", "1",
                       "--sample_prompts", "0", "--log_steps", "1", "--no-report")
    assert code == 0, output[-2000:]
    assert "Judgements: 2 pairs (dpo, kto), 1 labelled replies (kto)" in output
    assert (out / "best_model" / "model.safetensors").is_file()
