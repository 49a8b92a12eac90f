"""`train.py serve`: the bot behind OpenAI's chat completions API, for the tools a team already uses.

One process (FastAPI on uvicorn) serves `POST /v1/chat/completions` (streamed as server-sent events in
OpenAI's chunk format, or whole), `GET /v1/models` (the model's name, never its path), `GET /health` and
`GET /metrics` (Prometheus text). Replies come from the built-in engine (core/model/engine.py: continuous
batching, the same tokens as `chat` for the same history and seed) or, with `--engine openai
--backend_url URL`, from any OpenAI-compatible server (core/model/remote.py).

Bounded: at most --max_batch replies decode at once and --max_queue wait (429 with Retry-After beyond),
bodies over --max_body_bytes are refused (413), max_tokens over --max_tokens too (400). A history is held
to training's rules: the oldest turns are dropped to fit --max_length (400 when even the last message does
not fit), and special-token text is refused or made plain by --special_tokens. Every refusal is a 4xx with
OpenAI's JSON error body; the server keeps serving. It binds to 127.0.0.1; any other --host needs --store,
whose API keys (`Authorization: Bearer KEY`) every /v1 and /metrics request must then carry. SIGTERM
stops taking requests, lets those in flight finish (up to --drain_seconds) and exits.
"""

import asyncio
import ipaddress
import json
import math
import os
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.config import LoadOptions, check_options, option
from core.data.chat_format import ChatEncoder
from core.dataset import Conversation, Message
from core.errors import ConfigError, DataError, TemplateError, first_line
from core.model.engine import Closed, Event, QueueFull
from core.model.generation import Sampling
from core.utils import stage

ROLES = ("system", "user", "assistant")


@dataclass
class ServeConfig(LoadOptions):
    model: str = option("", "the model to serve: a checkpoint directory (best_model/), hub id, .gguf file or 'smollm2'; required with --engine builtin")
    engine: str = option("builtin", "builtin: this process decodes with continuous batching; openai: forward to the OpenAI-compatible server at --backend_url (vLLM, llama-server, Ollama)", ("builtin", "openai"))
    backend_url: str = option("", "with --engine openai: the server's base URL, such as http://127.0.0.1:8000/v1")
    served_name: str = option("", "the model's name in the API (default: the checkpoint's directory names, never a full path)")
    host: str = option("127.0.0.1", "address to listen on; anything but loopback needs --store (API keys)")
    port: int = option(8000, "port to listen on")
    store: str = option("", "the team store (a path or database URL) whose API keys requests must carry (Authorization: Bearer KEY); required beyond loopback")
    max_batch: int = option(8, "most replies decoded at once (rows of one batch)", at_least=1)
    max_queue: int = option(32, "most requests waiting for a row; beyond it the answer is 429 with Retry-After", at_least=0)
    max_tokens: int = option(512, "largest max_tokens a request may ask for", at_least=1)
    max_new_tokens: int = option(Sampling.max_new_tokens, "a reply's length in tokens when a request gives no max_tokens", at_least=1)
    max_length: int = option(2048, "longest prompt in tokens: older turns are dropped to fit, as in training", at_least=16)
    special_tokens: str = option("refuse", "a message spelling a special token (<|im_end|>): refuse answers 400; text reads it as plain text", ("refuse", "text"))
    max_body_bytes: int = option(1_000_000, "largest request body; larger ones are refused with 413", at_least=1024)
    temperature: float = option(Sampling.temperature, "sampling temperature when a request gives none (0: greedy)", at_least=0)
    top_p: float = option(Sampling.top_p, "nucleus sampling when a request gives none")
    repetition_penalty: float = option(Sampling.repetition_penalty, "penalise tokens already in the conversation (1: off)")
    no_repeat_ngram_size: int = option(Sampling.no_repeat_ngram_size, "never repeat a phrase of this many tokens within one reply (0: off)", at_least=0)
    drain_seconds: float = option(10.0, "on SIGTERM, how long requests in flight may take to finish", at_least=0)

    def validate(self) -> None:
        check_options(self)
        if self.engine == "builtin" and not self.model:
            raise ConfigError("--model is required (a checkpoint directory such as runs/mine/best_model), or pass "
                              "--engine openai --backend_url URL")
        if self.engine == "openai" and not self.backend_url:
            raise ConfigError("--engine openai needs --backend_url (an OpenAI-compatible server, such as "
                              "http://127.0.0.1:8000/v1)")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")
        if not 0 < self.top_p <= 1 or not 0 < self.repetition_penalty:
            raise ConfigError("--top_p must be in (0, 1] and --repetition_penalty positive")
        if not is_loopback(self.host) and not self.store:
            raise ConfigError(f"--host {self.host} listens beyond this machine: pass --store (the team store) so "
                              "that requests need an API key, or keep --host 127.0.0.1")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def served_name(model: str) -> str:
    """A name for the API: a hub id as it is, a local directory as its last two names, a file as its stem."""
    path = Path(model)
    if path.is_dir():
        return "/".join(path.resolve().parts[-2:])
    if path.is_file():
        return path.stem
    return model


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers or {}


@dataclass
class Metrics:
    """What /metrics reports: counters since start, and the last minute's first-token times and tokens."""
    requests: dict = field(default_factory=dict)  # status code -> count
    completion_tokens: int = 0
    prompt_tokens: int = 0
    first_token_seconds: deque = field(default_factory=lambda: deque(maxlen=1000))
    first_token_sum: float = 0.0
    first_token_count: int = 0
    finished: deque = field(default_factory=lambda: deque(maxlen=10000))  # (time, tokens) of each reply's tokens

    def count(self, status: int) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1

    def first_token(self, seconds: float) -> None:
        self.first_token_seconds.append(seconds)
        self.first_token_sum += seconds
        self.first_token_count += 1

    def text(self, queued: int, active: int, window: float = 60.0) -> str:
        now = time.monotonic()
        per_second = sum(n for t, n in list(self.finished) if now - t <= window) / window
        times = sorted(self.first_token_seconds)
        lines = ["# HELP roleplay_requests_total Chat completion requests by HTTP status.",
                 "# TYPE roleplay_requests_total counter"]
        lines += [f'roleplay_requests_total{{status="{code}"}} {n}' for code, n in sorted(self.requests.items())]
        lines += ["# HELP roleplay_completion_tokens_total Tokens generated.",
                  "# TYPE roleplay_completion_tokens_total counter", f"roleplay_completion_tokens_total "
                  f"{self.completion_tokens}",
                  "# HELP roleplay_prompt_tokens_total Prompt tokens read.",
                  "# TYPE roleplay_prompt_tokens_total counter", f"roleplay_prompt_tokens_total {self.prompt_tokens}",
                  "# HELP roleplay_queue_length Requests waiting for a decoding row.",
                  "# TYPE roleplay_queue_length gauge", f"roleplay_queue_length {queued}",
                  "# HELP roleplay_active_rows Replies being decoded.",
                  "# TYPE roleplay_active_rows gauge", f"roleplay_active_rows {active}",
                  "# HELP roleplay_tokens_per_second Tokens generated per second over the last minute.",
                  "# TYPE roleplay_tokens_per_second gauge", f"roleplay_tokens_per_second {per_second:.3f}",
                  "# HELP roleplay_time_to_first_token_seconds From request to first token (last 1000 requests).",
                  "# TYPE roleplay_time_to_first_token_seconds summary"]
        for q in (0.5, 0.95):
            value = times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")
            lines.append(f'roleplay_time_to_first_token_seconds{{quantile="{q}"}} {value:.4f}')
        lines += [f"roleplay_time_to_first_token_seconds_sum {self.first_token_sum:.4f}",
                  f"roleplay_time_to_first_token_seconds_count {self.first_token_count}"]
        return "\n".join(lines) + "\n"


class Backend:
    """Where replies come from: the built-in engine (a model loaded here) or a remote OpenAI-compatible server."""

    def __init__(self, config: ServeConfig):
        self.config = config
        if config.engine == "openai":
            from core.model.remote import RemoteModel
            self.remote, self.engine = RemoteModel(config.backend_url, os.environ.get("OPENAI_API_KEY", "")), None
            self.name = config.served_name or self.remote.name
            return
        from core.model.engine import Engine
        from core.use.backend import load_for_chat
        model, self.tokenizer = load_for_chat(config.model, config)
        try:
            self.engine, self.remote = Engine(model, self.tokenizer, config.max_batch, config.max_queue), None
        except ValueError as err:
            raise ConfigError(f"--model {config.model}: {err}") from None
        self.encoder = ChatEncoder(self.tokenizer, config.max_length, config.special_tokens)
        self.name = config.served_name or served_name(config.model)

    @property
    def queued(self) -> int:
        return self.engine.queued if self.engine else 0

    @property
    def active(self) -> int:
        return self.engine.active if self.engine else 0

    def prompt(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: training's rules for special-token text, the oldest turns dropped to fit."""
        system = [m for m in messages[:1] if m["role"] == "system"]
        body = messages[len(system):][-self.config.max_length:]  # each message renders as at least one token

        def ids(start: int) -> list[int]:
            chat = [Message(m["role"], m["content"]) for m in system + body[start:]]
            try:
                return self.encoder.prompt_ids(Conversation(chat, "the request"))
            except (DataError, TemplateError) as err:
                raise ApiError(400, str(err).replace("--special_tokens text", "serve --special_tokens text"),
                               code="invalid_messages") from None

        low, high = 0, max(len(body) - 1, 0)  # the fewest turns dropped such that the prompt fits
        if len(prompt := ids(low)) <= self.config.max_length:
            return prompt
        if len(last := ids(high)) > self.config.max_length:
            raise ApiError(400, f"the last message with the system prompt is {len(last)} tokens, over this "
                                f"server's --max_length of {self.config.max_length}; shorten it",
                           code="context_length_exceeded")
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if len(ids(middle)) <= self.config.max_length else (middle, high)
        return ids(high)

    def submit(self, messages: list[dict], sampling: Sampling, seed, stop, sink):
        if self.remote is not None:
            return self.remote.submit(messages, sampling, seed, stop, sink), 0
        prompt = self.prompt(messages)
        return self.engine.submit(prompt, sampling, seed, stop, sink), len(prompt)

    def close(self, drain_seconds: float) -> None:
        if self.engine is not None:
            self.engine.close(drain_seconds)


def parse_request(body: bytes, config: ServeConfig, model_name: str) -> dict:
    """The request's fields, checked; an ApiError (400 or 404) names the first that is wrong."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(request, dict):
        raise ApiError(400, "the body must be a JSON object")
    if request.get("model") not in (None, model_name):
        raise ApiError(404, f"the model {str(request['model'])[:100]!r} does not exist; this server serves "
                            f"{model_name!r} (GET /v1/models)", "invalid_request_error", "model_not_found")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", code="invalid_messages")
    chat = []
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI's content parts: the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(content, str):
            raise ApiError(400, f"messages[{index}] must have a role ({', '.join(ROLES)}) and a text content",
                           code="invalid_messages")
        if message["role"] == "system" and index > 0:
            raise ApiError(400, f"messages[{index}]: a system message may only come first", code="invalid_messages")
        chat.append({"role": message["role"], "content": content})
    if request.get("n", 1) != 1:
        raise ApiError(400, "n must be 1: this server returns one reply per request")
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    max_tokens = config.max_new_tokens if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= config.max_tokens:
        raise ApiError(400, f"max_tokens must be an integer from 1 to {config.max_tokens} (this server's cap)")
    temperature = number(request, "temperature", config.temperature, 0, 2)
    top_p = number(request, "top_p", config.top_p, 0, 1)
    if top_p == 0:
        raise ApiError(400, "top_p must be above 0")
    seed = request.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise ApiError(400, "seed must be an integer from 0 to 2**63 - 1")
    stop = request.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and len(s) <= 200 for s in stop):
        raise ApiError(400, "stop must be a string or a list of up to 4 strings")
    if not isinstance(request.get("stream", False), bool):
        raise ApiError(400, "stream must be true or false")
    options = request.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object")
    sampling = Sampling(temperature=temperature or 1.0, top_p=top_p, repetition_penalty=config.repetition_penalty,
                        no_repeat_ngram_size=config.no_repeat_ngram_size, max_new_tokens=max_tokens,
                        greedy=temperature == 0)
    return {"messages": chat, "sampling": sampling, "seed": seed, "stop": stop,
            "stream": request.get("stream", False), "usage": options.get("include_usage") is True}


def number(request: dict, name: str, default: float, low: float, high: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number from {low} to {high}")
    return float(value)


def build_app(config: ServeConfig, backend: Backend, user_for_key=None):
    """The FastAPI app; `user_for_key` (the store's) makes every /v1 and /metrics request need a valid key."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await asyncio.to_thread(backend.close, config.drain_seconds)

    app = FastAPI(title="roleplay-tuner", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def error(err: ApiError) -> JSONResponse:
        if err.status != 401:
            metrics.count(err.status)
        return JSONResponse({"error": {"message": err.message, "type": err.kind, "param": None, "code": err.code}},
                            status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        return error(err)

    @app.exception_handler(404)
    async def not_found(request, _err):
        return error(ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def wrong_method(request, _err):
        return error(ApiError(405, f"{request.method} is not allowed on {request.url.path}"))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, err):
        return error(ApiError(400, f"invalid request: {first_line(err)}"))

    @app.exception_handler(Exception)
    async def bug(_request, err: Exception):
        return error(ApiError(500, f"internal error ({type(err).__name__})", "server_error"))

    async def authorise(request: Request) -> None:
        if user_for_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip() or await asyncio.to_thread(user_for_key, key.strip()) is None:
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY; `train.py team` issues "
                                "keys)", "authentication_error", "invalid_api_key")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": backend.name, "queued": backend.queued, "active": backend.active}

    @app.get("/metrics")
    async def prometheus(request: Request):
        await authorise(request)
        return PlainTextResponse(metrics.text(backend.queued, backend.active),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        await authorise(request)
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": 0,
                                            "owned_by": "roleplay-tuner"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        await authorise(request)
        fields = parse_request(await read_body(request, config.max_body_bytes), config, backend.name)
        loop, inbox = asyncio.get_running_loop(), asyncio.Queue()

        def sink(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

        started = time.monotonic()
        try:
            handle, prompt_tokens = await asyncio.to_thread(
                backend.submit, fields["messages"], fields["sampling"], fields["seed"], fields["stop"], sink)
        except QueueFull as err:
            raise ApiError(429, f"the server is busy ({err}); retry shortly", "rate_limit_error",
                           "queue_full", {"Retry-After": "2"}) from None
        except Closed as err:
            raise ApiError(503, f"{err}; retry shortly", "server_error", "shutting_down",
                           {"Retry-After": "5"}) from None
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        metrics.count(200)

        first = [True]

        async def next_event() -> Event:
            event = await inbox.get()
            if event.kind == "text" and first[0]:
                first[0] = False
                metrics.first_token(time.monotonic() - started)
            if event.kind == "done":
                metrics.completion_tokens += event.completion_tokens
                metrics.prompt_tokens += event.prompt_tokens or prompt_tokens
                metrics.finished.append((time.monotonic(), event.completion_tokens))
            return event

        if fields["stream"]:
            return StreamingResponse(stream(next_event, handle, reply_id, created, backend.name,
                                            prompt_tokens if fields["usage"] else None),
                                     media_type="text/event-stream")
        text, event = "", None
        try:
            while True:
                get = asyncio.ensure_future(next_event())
                while not get.done():
                    await asyncio.wait([get], timeout=0.5)
                    if not get.done() and await request.is_disconnected():
                        get.cancel()
                        return JSONResponse({}, status_code=499)
                event = get.result()
                if event.kind != "text":
                    break
                text += event.text
        finally:
            handle.cancel()
        if event.kind == "error":
            raise ApiError(502 if backend.remote else 500, f"the reply failed: {event.text}", "server_error")
        usage = {"prompt_tokens": event.prompt_tokens or prompt_tokens, "completion_tokens": event.completion_tokens,
                 "total_tokens": (event.prompt_tokens or prompt_tokens) + event.completion_tokens}
        return {"id": reply_id, "object": "chat.completion", "created": created, "model": backend.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text.strip()},
                             "finish_reason": event.finish_reason}], "usage": usage}

    return app


async def stream(next_event, handle, reply_id: str, created: int, name: str, usage_prompt: int | None):
    """Server-sent events in OpenAI's chunk format; a client that goes away cancels the reply (its row is freed).
    `usage_prompt` (stream_options.include_usage): a last chunk with the usage and no choices."""
    def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        body = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while (event := await next_event()).kind == "text":
            yield chunk({"content": event.text})
        if event.kind == "error":
            yield f"data: {json.dumps({'error': {'message': event.text, 'type': 'server_error'}})}\n\n"
        else:
            yield chunk({}, event.finish_reason)
            if usage_prompt is not None:
                prompt = event.prompt_tokens or usage_prompt
                yield chunk(None, usage={"prompt_tokens": prompt, "completion_tokens": event.completion_tokens,
                                         "total_tokens": prompt + event.completion_tokens})
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()


async def read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (whatever Content-Length claims)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes, over this server's limit of {limit}",
                       code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"the body is over this server's limit of {limit} bytes", code="body_too_large")
    return bytes(body)


def open_keys(config: ServeConfig):
    """The store's key check, or None on loopback without --store."""
    if not config.store:
        return None
    from core.store import open_store
    return open_store(config.store).user_for_key


def serve(config: ServeConfig) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError("train.py serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    from core.use.web_app import check_port
    check_port(config.host, config.port)
    user_for_key = open_keys(config)
    with stage("loading the model to serve", "nothing was served"):
        backend = Backend(config)
    app = build_app(config, backend, user_for_key)
    print(f"Serving {backend.name} on http://{config.host}:{config.port}/v1 (OpenAI chat completions; "
          f"Ctrl-C or SIGTERM to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           timeout_graceful_shutdown=max(1, math.ceil(config.drain_seconds))))
    with stage("serving", "requests in flight were answered (up to --drain_seconds) before it stopped"):
        try:
            server.run()
        except (OSError, SystemExit) as err:
            raise ConfigError(f"--port {config.port}: the server could not start ({first_line(err)})") from None
    return 0
