"""Where a practice call's replies come from: a model loaded here, or any OpenAI-compatible server
(`--backend_url`: vLLM, llama-server, Ollama, another `serve`), for the chat and `evaluate --conversations`.
A caller with many sessions at once (the web app) opens it `batched`: the model's replies then come from
one continuous-batching engine (core/model/engine.py), the same tokens as unbatched.

A seed means the same thing both ways: the local model samples after `torch.manual_seed(seed)`, and `serve`
seeds the request's own generator alike, so a call against `serve` repeats the call made here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from core.config import LoadOptions
from core.model.engine import Engine
from core.model.generation import Sampling, generate_replies, prompt_ids, stream_reply
from core.model.remote import RemoteModel


def load_for_chat(name: str, load: LoadOptions):
    """(model, tokenizer) ready to generate: a checkpoint directory, hub id, .gguf file or 'smollm2'."""
    from core.model.load import load_model_and_tokenizer
    from core.utils import pick_device
    model, tokenizer = load_model_and_tokenizer(name, load.cache_dir, load.trust_remote_code)
    target = pick_device(load.device)
    model.to(target, dtype=torch.bfloat16 if target.type == "cuda" else torch.float32).eval()
    return model, tokenizer


@dataclass
class Backend:
    name: str
    model: object = None
    tokenizer: object = None
    remote: RemoteModel | None = None
    engine: Engine | None = None


def open_backend(model: str, backend_url: str, load: LoadOptions, batched: bool = False) -> Backend:
    if backend_url:
        remote = RemoteModel(backend_url, os.environ.get("OPENAI_API_KEY", ""))  # as OpenAI's clients read it
        return Backend(f"{remote.name} at {remote.url}", remote=remote)
    loaded, tokenizer = load_for_chat(model, load)
    return Backend(model, loaded, tokenizer, engine=Engine(loaded, tokenizer) if batched else None)


def stream(backend: Backend, messages: list[dict], sampling: Sampling, seed: int | None = None,
           special_tokens: str = "refuse") -> Iterator[str]:
    """The next reply, piece by piece; under `special_tokens="text"` control-token text in the messages is read as
    plain text, as training reads it (a server behind --backend_url applies its own template)."""
    if backend.remote is not None:
        yield from backend.remote.stream(messages, sampling, seed)
        return
    if backend.engine is not None:
        for event in backend.engine.events(prompt_ids(backend.tokenizer, messages, special_tokens), sampling, seed):
            if event.kind == "error":
                raise RuntimeError(f"the reply failed: {event.text}")
            yield event.text
        return
    if seed is not None:
        import torch
        torch.manual_seed(seed)
    yield from stream_reply(backend.model, backend.tokenizer, messages, sampling, special_tokens)


def replies(backend: Backend, conversations: list[list[dict]], sampling: Sampling, batch_size: int) -> list[str]:
    """The next reply to each conversation: in left-padded batches here, or `batch_size` requests at a time to the
    server (whose engine batches them)."""
    if backend.remote is None:
        return generate_replies(backend.model, backend.tokenizer, conversations, sampling, batch_size=batch_size)
    with ThreadPoolExecutor(batch_size) as pool:
        return list(pool.map(lambda chat: backend.remote.reply(chat, sampling), conversations))
