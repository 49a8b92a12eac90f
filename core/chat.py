"""What practising with the bot needs besides generation (core/generation.py): personas to play, a
conversation as a training record, a model loaded for chatting, and a check for looping replies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from core.config import ConfigError


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
