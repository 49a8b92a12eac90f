"""Where a practice call's replies come from: a model loaded here, or any OpenAI-compatible server
(`--backend_url`: vLLM, llama-server, Ollama, another `serve`), for the chat and `evaluate --conversations`.

A seed means the same thing both ways: the local model samples after `torch.manual_seed(seed)`, and `serve`
seeds the request's own generator alike, so a call against `serve` repeats the call made here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.config import LoadOptions
from core.model.generation import Sampling, generate_replies, stream_reply
from core.model.remote import RemoteModel


@dataclass
class Backend:
    name: str
    model: object = None
    tokenizer: object = None
    remote: RemoteModel | None = None


def open_backend(model: str, backend_url: str, load: LoadOptions) -> Backend:
    if backend_url:
        remote = RemoteModel(backend_url, os.environ.get("OPENAI_API_KEY", ""))  # as OpenAI's clients read it
        return Backend(f"{remote.name} at {remote.url}", remote=remote)
    from core.use.chat import load_for_chat
    loaded, tokenizer = load_for_chat(model, load)
    return Backend(model, loaded, tokenizer)


def stream(backend: Backend, messages: list[dict], sampling: Sampling, seed: int | None = None) -> Iterator[str]:
    """The next reply, piece by piece."""
    if backend.remote is not None:
        yield from backend.remote.stream(messages, sampling, seed)
        return
    if seed is not None:
        import torch
        torch.manual_seed(seed)
    yield from stream_reply(backend.model, backend.tokenizer, messages, sampling)


def replies(backend: Backend, conversations: list[list[dict]], sampling: Sampling, batch_size: int) -> list[str]:
    """The next reply to each conversation: in left-padded batches here, or `batch_size` requests at a time to the
    server (whose engine batches them)."""
    if backend.remote is None:
        return generate_replies(backend.model, backend.tokenizer, conversations, sampling, batch_size=batch_size)
    with ThreadPoolExecutor(batch_size) as pool:
        return list(pool.map(lambda chat: backend.remote.reply(chat, sampling), conversations))
