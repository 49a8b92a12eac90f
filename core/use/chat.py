"""What practising with the bot needs besides the session (core/use/practice.py) and generation
(core/model/generation.py): personas to play, a model loaded for chatting, the options every practice
client takes, and a check for looping replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from core.config import LoadOptions, check_options, option
from core.data.chat_format import special_token_text
from core.errors import ConfigError, first_line
from core.model.generation import Sampling
from core.outputs import Input
from core.use import backend
from core.use.feedback import FeedbackFile, check_feedback_file
from core.use.practice import Answerer, NotRecorded, special_text_rule


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
        raise ConfigError(f"--scenarios {path}: invalid YAML ({first_line(err)})") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"--scenarios {path}: expected a list of {{name, system}} entries")
    scenarios = []
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("system"), str) and set(entry) <= {"name", "system"}):
            raise ConfigError(f"--scenarios {path}: entry {index} must have exactly a 'name' and a 'system' text")
        scenarios.append(Scenario(entry["name"], entry["system"].strip()))
    return scenarios


def load_answerer(name: str, config: ChatOptions, backend_url: str = "") -> Answerer:
    """A model loaded to answer as the prospect (or the server at `backend_url`) with the client's sampling."""
    replier = backend.open_backend(name, backend_url, config)
    return Answerer(replier.name, replier, config.sampling(), config.special_tokens)


def text_rule(answerer: Answerer, config: ChatOptions, scenarios: list[Scenario]):
    """`--special_tokens` for this model's tokenizer; the personas given at the start are held to it now."""
    pattern = special_token_text(answerer.tokenizer) if answerer.tokenizer is not None else None
    rule = special_text_rule(pattern, config.special_tokens)
    for what, text in [("--system_prompt", config.system_prompt)] + [
            (f"--scenarios {config.scenarios}: scenario {s.name!r}", s.system) for s in scenarios]:
        try:
            rule(text, "the persona")
        except NotRecorded as err:
            raise ConfigError(f"{what}: {err}") from None
    return rule


def feedback_recorder(config: ChatOptions, inputs: list[Input]) -> FeedbackFile | None:
    """The feedback file when --feedback_file is given (the store holds the record; the file is an export made as
    the judgements come), checked before any model loads."""
    if not config.feedback_file:
        return None
    path = Path(config.feedback_file).expanduser()
    check_feedback_file(path, inputs)
    return FeedbackFile(path)


@dataclass
class ChatOptions(LoadOptions):
    """What every way of talking to a model takes: the model, the persona, the sampling, and how the model loads."""

    model: str = option("", "the model to talk to: a checkpoint directory (best_model/), hub id, .gguf file or 'smollm2'; required")
    system_prompt: str = option("", "the persona the model plays (its system prompt)")
    scenarios: str = option("", "a YAML list of {name, system} personas (or a text file with one); the first is used unless --system_prompt is given")
    temperature: float = option(Sampling.temperature, "sampling temperature (higher: more varied replies)")
    top_p: float = option(Sampling.top_p, "nucleus sampling: keep the most likely tokens up to this probability mass")
    repetition_penalty: float = option(Sampling.repetition_penalty, "penalise tokens already in the conversation (1: off)")
    no_repeat_ngram_size: int = option(Sampling.no_repeat_ngram_size, "never repeat a phrase of this many tokens within one reply (0: off)", at_least=0)
    max_new_tokens: int = option(Sampling.max_new_tokens, "longest reply in tokens", at_least=1)
    greedy: bool = option(False, "always the most likely reply (no sampling)")
    store: str = option("", "the team's store the call and its judgements are recorded in: a path (SQLite, created on first use) or a URL (sqlite:///PATH, postgresql+psycopg://USER@HOST/DB); default: practice.db beside --model")
    feedback_file: str = option("", "also append each judgement to this JSONL file as it is made (preference tuning reads it: --objective dpo or kto); default: none, the store holds them (train.py team export writes the file)")
    special_tokens: str = option("refuse", "text that spells one of the tokenizer's special tokens (<|im_end|>) in a persona, a message or a rewrite: refuse it, as training does by default, or take it (and train the files with --special_tokens text)", ("refuse", "text"))

    backend_url: str = option("", "an OpenAI-compatible server to practise against instead of --model: its base URL, such as http://127.0.0.1:8000/v1 (serve, vLLM, llama-server, Ollama); the model name comes from its /v1/models")

    def validate(self) -> None:
        if self.backend_url and not self.model:
            self.model = self.backend_url  # what the banner and the judgements name
        if not self.model:
            raise ConfigError("--model is required (a checkpoint directory such as checkpoints/best_model)")
        check_options(self)
        for name in ("temperature", "top_p", "repetition_penalty"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ConfigError(f"--{name} must be a positive number, got {getattr(self, name)}")
        if self.top_p > 1:
            raise ConfigError(f"--top_p must be at most 1, got {self.top_p}")

    def sampling(self) -> Sampling:
        return Sampling(**{f.name: getattr(self, f.name) for f in fields(Sampling)})
