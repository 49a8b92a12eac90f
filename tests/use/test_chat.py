"""Practising with the bot: sampling and streaming, the terminal chat through a pseudo-terminal, scenarios."""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import FormatOptions
from core.data.conversations import load_conversations
from core.errors import ConfigError
from core.model.generation import NoRepeatInReply, Sampling, generate_reply, stream_reply
from core.use.chat import load_scenarios, repeated_sentence


@pytest.fixture(scope="module")
def tiny(tiny_qwen_1k_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_1k_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_qwen_1k_dir)


CHAT = [{"role": "system", "content": "You are Dana."}, {"role": "user", "content": "Hi Dana, got a minute?"}]


def test_sampled_replies_vary_with_the_seed_and_greedy_ones_do_not(tiny):
    model, tokenizer = tiny
    sampled = {generate_reply(model, tokenizer, CHAT, Sampling(max_new_tokens=12), seed=s) for s in range(4)}
    assert len(sampled) > 1
    assert generate_reply(model, tokenizer, CHAT, Sampling(max_new_tokens=12), seed=3) == \
        generate_reply(model, tokenizer, CHAT, Sampling(max_new_tokens=12), seed=3)
    greedy = Sampling(max_new_tokens=12, greedy=True)
    assert len({generate_reply(model, tokenizer, CHAT, greedy, seed=s) for s in range(3)}) == 1


def test_streamed_reply_is_the_generated_reply(tiny):
    model, tokenizer = tiny
    greedy = Sampling(max_new_tokens=12, greedy=True)
    assert "".join(stream_reply(model, tokenizer, CHAT, greedy)).strip() == generate_reply(model, tokenizer, CHAT,
                                                                                          greedy)


def test_no_phrase_of_the_reply_repeats_but_the_prompt_is_not_counted():
    processor = NoRepeatInReply(3, prompt_length=4)
    ids = torch.tensor([[5, 6, 7, 5, 1, 2, 3, 1, 2]])  # the reply is 1 2 3 1 2: "3" would repeat "1 2 3"
    scores = processor(ids, torch.zeros(1, 10))
    assert scores[0, 3] == -float("inf") and (scores[0, [0, 1, 2, 4, 5, 6, 7, 8, 9]] == 0).all()
    assert repeated_sentence("I'm not sure. I'm not sure.") == "I'm not sure."
    assert repeated_sentence("No. Not now. No.") is None


def test_scenarios_load_from_yaml_and_text_and_refuse_bad_entries(tmp_path):
    scenarios = load_scenarios(str(ROOT / "data" / "scenarios.yaml"))
    assert len(scenarios) >= 3 and all(s.name and s.system for s in scenarios)
    text = tmp_path / "tom.txt"
    text.write_text("You are Tom, a plant manager.\n")
    assert [(s.name, s.system) for s in load_scenarios(str(text))] == [("tom", "You are Tom, a plant manager.")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: Dana\n  sytem: You are Dana.\n")
    with pytest.raises(ConfigError, match=r"entry 0 must have exactly a 'name' and a 'system'"):
        load_scenarios(str(bad))


class Terminal:
    """A command run on a pseudo-terminal, read until a prompt appears."""

    def __init__(self, command: list[str]):
        main, child = pty.openpty()
        self.process = subprocess.Popen(command, stdin=child, stdout=child, stderr=child, cwd=ROOT, close_fds=True)
        os.close(child)
        self.fd, self.output = main, ""

    def read_until(self, marker: str, timeout: float = 120) -> str:
        start, deadline = len(self.output), time.time() + timeout
        while marker not in self.output[start:]:
            assert time.time() < deadline, f"no {marker!r} in: {self.output[-2000:]}"
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    self.output += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:
                    break
        return self.output[start:]

    def send(self, line: str, until: str = "rep> ") -> str:
        os.write(self.fd, (line + "\n").encode())
        return self.read_until(until)


def test_terminal_chat_turns_undo_new_persona_and_a_saved_record(tmp_path, tiny_qwen_1k_dir):
    saved = tmp_path / "practice.jsonl"
    terminal = Terminal([sys.executable, "train.py", "chat", "--model", str(tiny_qwen_1k_dir), "--max_new_tokens",
                         "6", "--system_prompt", "You are Dana, IT director.", "--seed", "1"])
    assert "Persona: You are Dana, IT director." in terminal.read_until("rep> ")
    first = terminal.send("Hi Dana, do you have a minute?")
    assert "prospect> " in first
    assert "prospect> " in terminal.send("We cut payroll time in half.")
    assert "Took back your last message" in terminal.send("/undo")
    assert "New prospect" in terminal.send("/new")
    assert "New persona" in terminal.send("/persona You are Tom, a plant manager.")
    terminal.send("Tom, I sell safety gloves.")
    assert "Saved this conversation" in terminal.send(f"/save {saved}")
    os.write(terminal.fd, b"/quit\n")
    assert terminal.process.wait(timeout=60) == 0
    (conversation,) = load_conversations(saved, FormatOptions())  # a valid training record
    record = json.loads(saved.read_text())
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][0]["content"] == "You are Tom, a plant manager."
    assert record["messages"][1]["content"] == "Tom, I sell safety gloves."
    assert conversation.messages[-1].role == "assistant"
