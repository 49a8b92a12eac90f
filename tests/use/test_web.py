"""The browser practice app in a real headless Chromium: load the page, talk, compare, download the transcript."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from core.config import FormatOptions
from core.data.conversations import load_conversations
from core.use.web_app import NONE, Practice, WebConfig, model_choices

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "runs" / "test-artifacts" / "web_chat.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app(tiny_qwen_1k_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "train.py", "web", "--model", str(tiny_qwen_1k_dir), "--compare_model",
                                str(tiny_qwen_1k_dir), "--scenarios", "data/scenarios.yaml", "--max_new_tokens", "6",
                                "--greedy", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert process.poll() is None and time.time() < deadline, process.stdout.read() if process.poll() else ""
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


def open_app_page(playwright, url: str, height: int):
    """Debian's Chromium, headless and offline, on the web app's page once its message box is there."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])
    page = browser.new_page(viewport={"width": 1280, "height": height})
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("#rep-message textarea", timeout=60_000)
    return browser, page


def download_transcript(page, saved: Path) -> Path:
    """Click Download until the transcript is there: it is prepared once both replies are complete."""
    from playwright.sync_api import TimeoutError
    for _ in range(30):
        try:
            with page.expect_download(timeout=2_000) as download:
                page.click("#download")
        except TimeoutError:
            continue
        download.value.save_as(saved)
        return saved
    raise AssertionError("the Download button gave no transcript within a minute")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh dev installs it as root)")
def test_browser_chat_answers_compares_and_downloads_a_training_record(app, tmp_path):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser, page = open_app_page(playwright, app, height=1000)
        assert "Frank Marquez" in page.input_value("#persona textarea")  # the first scenario's persona
        page.fill("#rep-message textarea", "Hi Frank, do you have a minute?")
        page.click("#send")
        for chat in ("#chat-a", "#chat-b"):  # the model and the compared model both answer the same message
            page.wait_for_selector(f"{chat} [data-testid='bot']", timeout=60_000)
            assert page.inner_text(f"{chat} [data-testid='user']").strip() == "Hi Frank, do you have a minute?"
        # the compared model answers once the model's reply is complete
        page.wait_for_function("document.querySelector(\"#chat-b [data-testid='bot']\").innerText.trim().length > 0")
        reply = page.inner_text("#chat-a [data-testid='bot']").strip()
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        saved = download_transcript(page, tmp_path / "transcript.jsonl")
        browser.close()
    record = json.loads(saved.read_text())
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    # the page shows the reply as HTML, which folds runs of whitespace
    assert record["messages"][2]["content"].split() == reply.split()
    assert "Frank Marquez" in record["messages"][0]["content"]
    assert len(list(load_conversations(saved, FormatOptions()))) == 1  # a valid training record
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_handlers_answer_regenerate_with_variety_and_offer_the_run_s_other_checkpoints(tmp_path, tiny_qwen_1k_dir):
    run = tmp_path / "run"
    for name in ("best_model", "epoch_1", "checkpoint-4"):
        shutil.copytree(tiny_qwen_1k_dir, run / name)
    (run / "tensorboard").mkdir()  # not a model
    config = WebConfig(model=str(run / "best_model"), max_new_tokens=6)
    assert model_choices(config) == [str(run / name) for name in ("best_model", "checkpoint-4", "epoch_1")]
    torch.manual_seed(0)
    practice, persona = Practice(config), "You are Dana, IT director."
    *_, (chat, compared, message_box) = practice.send("Hi Dana", [], [], persona, config.model, NONE)
    assert [m["role"] for m in chat] == ["user", "assistant"] and compared == [] and message_box == ""
    replies = set()
    for _ in range(4):  # a regenerated reply replaces the last one, and sampling makes it vary
        *_, (again, _) = practice.regenerate(chat, [], persona, config.model, NONE)
        assert again[:-1] == chat[:-1] and again[-1]["role"] == "assistant"
        replies.add(again[-1]["content"])
    assert len(replies) > 1
    record = json.loads(Path(practice.transcript(again, persona)).read_text())
    assert record["messages"] == [{"role": "system", "content": persona}, *again]
