"""The engine a team already runs: replies from any OpenAI-compatible server (vLLM, llama.cpp's llama-server,
Ollama, or another `serve`) in place of a model loaded here.

`RemoteModel` asks the server's /v1/models for the model's name once, then streams chat completions; it
offers what the built-in engine offers (`submit` with a sink of `Event`s, `events`, `reply`), so `serve`,
the chat and `evaluate --conversations` take either. The sampling settings travel as the API's fields
(temperature 0 is greedy); those the API lacks (repetition penalty, no repeated phrase) are the
server's own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

from core.errors import ModelLoadError, first_line
from core.model.engine import Event, Request, events_of
from core.model.generation import Sampling

BUSY_RETRIES = 10  # a busy server (429 or 503) is asked again this many times, as its Retry-After says


class RemoteModel:
    def __init__(self, backend_url: str, api_key: str = "", timeout: float = 600.0):
        import httpx
        self.url = backend_url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        self.name = self._model_name()

    def _model_name(self) -> str:
        import httpx
        try:
            response = self.client.get(f"{self.url}/models")
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except httpx.HTTPError as err:
            raise ModelLoadError(f"--backend_url {self.url}: cannot list its models ({first_line(err)}); start "
                                 "the server, or pass the URL of an OpenAI-compatible one (ending in /v1)") from None
        except (ValueError, KeyError, IndexError, TypeError):
            raise ModelLoadError(f"--backend_url {self.url}: {self.url}/models did not list a model; pass the URL "
                                 "of an OpenAI-compatible server (ending in /v1)") from None

    def body(self, messages: list[dict], sampling: Sampling, seed: int | None, stop: list[str]) -> dict:
        body = {"model": self.name, "messages": messages, "max_tokens": sampling.max_new_tokens, "stream": True,
                "temperature": 0.0 if sampling.greedy else sampling.temperature, "top_p": sampling.top_p}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        return body

    def submit(self, messages: list[dict], sampling: Sampling, seed: int | None = None, stop: list[str] = (),
               sink: Callable[[Event], None] | None = None) -> Request:
        """Stream a reply in a thread of its own; its events go to `sink`; `cancel()` closes the stream."""
        request = Request([], sampling, seed, list(stop), sink or (lambda _: None))
        threading.Thread(target=self._stream, args=(request, messages), daemon=True).start()
        return request

    def _stream(self, request: Request, messages: list[dict]) -> None:
        import httpx
        finish, usage = "cancelled", {}
        try:
            body = self.body(messages, request.sampling, request.seed, request.stop)
            for attempt in range(BUSY_RETRIES + 1):
                with self.client.stream("POST", f"{self.url}/chat/completions", json=body) as response:
                    if response.status_code in (429, 503) and attempt < BUSY_RETRIES and not request.cancelled:
                        time.sleep(min(float(response.headers.get("retry-after", "1") or 1), 10))
                        continue  # the server is busy: ask again as it says
                    if response.status_code != 200:
                        response.read()
                        request.sink(Event("error", text=f"{self.url} answered {response.status_code}: "
                                                         f"{_message(response.text)}"))
                        return
                    for line in response.iter_lines():
                        if request.cancelled:
                            break
                        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        if "error" in chunk:
                            request.sink(Event("error", text=f"{self.url}: {_message(line[5:])}"))
                            return
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices", [])[:1]:
                            if (choice.get("delta") or {}).get("content"):
                                request.tokens.append(0)
                                request.sink(Event("text", choice["delta"]["content"]))
                            finish = choice.get("finish_reason") or finish
                    break
        except (httpx.HTTPError, ValueError) as err:
            request.sink(Event("error", text=f"{self.url}: {first_line(err)}"))
            return
        request.sink(Event("done", finish_reason=finish, prompt_tokens=usage.get("prompt_tokens", 0),
                           completion_tokens=usage.get("completion_tokens", len(request.tokens))))

    def events(self, messages: list[dict], sampling: Sampling, seed: int | None = None,
               stop: list[str] = ()) -> Iterator[Event]:
        return events_of(lambda sink: self.submit(messages, sampling, seed, stop, sink))

    def stream(self, messages: list[dict], sampling: Sampling, seed: int | None = None) -> Iterator[str]:
        """The reply's text as it comes (what `stream_reply` yields for a local model)."""
        for event in self.events(messages, sampling, seed):
            if event.kind == "error":
                raise ModelLoadError(f"the backend failed to reply: {event.text}")
            yield event.text

    def reply(self, messages: list[dict], sampling: Sampling, seed: int | None = None) -> str:
        return "".join(self.stream(messages, sampling, seed)).strip()


def _message(text: str) -> str:
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return first_line(Exception(text[:200]))
