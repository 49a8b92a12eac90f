"""Talk to a model exactly as it was trained: its own chat template with the generation prompt, stopping at the
end-of-turn token it learned. Replies are sampled by default, so two practice calls with the same opener
play out differently; `Sampling(greedy=True)` gives the one most likely reply.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import LogitsProcessor, LogitsProcessorList, TextIteratorStreamer

from core.config import ConfigError


@dataclass
class Sampling:
    """Decoding settings; the defaults vary replies without letting a small model loop on a sentence."""
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 4    # no 4-token phrase twice in one reply: the usual shape of a loop
    max_new_tokens: int = 128
    greedy: bool = False

    def generate_kwargs(self, prompt_length: int) -> dict:
        common = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.no_repeat_ngram_size:
            common["logits_processor"] = LogitsProcessorList([NoRepeatInReply(self.no_repeat_ngram_size,
                                                                              prompt_length)])
        if self.greedy:
            return {**common, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {**common, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": None}


class NoRepeatInReply(LogitsProcessor):
    """Forbid the token that would repeat an n-token phrase of the reply so far.

    Unlike transformers' `no_repeat_ngram_size`, which also counts the prompt, this looks only at the
    reply: the persona's own phrases and the chat template's markers stay free to use.
    """

    def __init__(self, size: int, prompt_length: int):
        self.size, self.prompt_length = size, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            if len(ids) < self.size:
                continue
            prefix = ids[len(ids) - self.size + 1:]
            banned = [ids[i + self.size - 1] for i in range(len(ids) - self.size + 1)
                      if ids[i:i + self.size - 1] == prefix]
            scores[row, banned] = -float("inf")
        return scores


def _inputs(model, tokenizer, messages: list[dict]) -> dict:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True).to(model.device)


@torch.no_grad()
def generate_reply(model, tokenizer, messages: list[dict], sampling: Sampling | None = None,
                   seed: int | None = None) -> str:
    """The bot's next reply to a conversation (a list of {"role", "content"}); `seed` makes sampling repeatable."""
    sampling = sampling or Sampling()
    inputs = _inputs(model, tokenizer, messages)
    if seed is not None:
        torch.manual_seed(seed)
    prompt_length = inputs["input_ids"].shape[1]
    output = model.generate(**inputs, **sampling.generate_kwargs(prompt_length), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip()


def stream_reply(model, tokenizer, messages: list[dict], sampling: Sampling | None = None) -> Iterator[str]:
    """The next reply, piece by piece as it is generated (generation runs in a background thread)."""
    sampling = sampling or Sampling()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    inputs = _inputs(model, tokenizer, messages)
    kwargs = {**inputs, **sampling.generate_kwargs(inputs["input_ids"].shape[1]), "streamer": streamer,
              "pad_token_id": tokenizer.pad_token_id}
    thread = threading.Thread(target=model.generate, kwargs=kwargs, daemon=True)
    thread.start()
    yield from streamer
    thread.join()


def repeated_sentence(text: str) -> str | None:
    """The first sentence that follows itself verbatim ("I'm not sure. I'm not sure."), or None."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    return next((a for a, b in zip(sentences, sentences[1:]) if a == b), None)


@dataclass
class Scenario:
    name: str
    system: str


def load_scenarios(path: str) -> list[Scenario]:
    """Personas to practise against: a YAML list of {name, system}, or a text file holding one persona."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--scenarios {path}: cannot read the file ({getattr(err, 'strerror', None) or err})"
                          ) from None
    if file.suffix not in (".yaml", ".yml", ".json"):
        return [Scenario(file.stem, text.strip())]
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--scenarios {path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"--scenarios {path}: expected a list of {{name, system}} entries")
    scenarios = []
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("system"), str) and set(entry) <= {"name", "system"}):
            raise ConfigError(f"--scenarios {path}: entry {index} must have exactly a 'name' and a 'system' text")
        scenarios.append(Scenario(entry["name"], entry["system"].strip()))
    return scenarios


def as_record(system: str, turns: list[dict]) -> dict:
    """A conversation in this project's `messages` training format (the persona first, when there is one)."""
    return {"messages": ([{"role": "system", "content": system}] if system else []) + list(turns)}


def load_for_chat(name: str, device: str = "auto", cache_dir: str = "", trust_remote_code: bool = False):
    """(model, tokenizer) ready to generate: a checkpoint directory, hub id, .gguf file or 'smollm2'."""
    from core.models import load_model_and_tokenizer
    from core.utils import pick_device
    model, tokenizer = load_model_and_tokenizer(name, cache_dir, trust_remote_code)
    target = pick_device(device)
    model.to(target, dtype=torch.bfloat16 if target.type == "cuda" else torch.float32).eval()
    return model, tokenizer
