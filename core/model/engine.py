"""Continuous batching: many callers' replies decoded by one model in one loop (`serve`, and any caller
that holds an `Engine`).

A request joins the running batch at the next decoding step and leaves when it finishes, so a long reply
does not hold back short ones. Each request keeps its own rows of the KV cache, its own sampling settings,
seed and stop strings. It is decoded exactly as `core.model.generation` decodes a lone reply: its prompt is
prefilled alone (the forward pass `generate` makes), and each step's scores pass through the same
processors (`processed_scores`, row by row, rows of one sampling setting in one call) and the same
pick (`pick_tokens`), the sampled ones drawn from a
`torch.Generator` of its own seeded with its seed, which draws what `generate_reply(seed=...)` draws from
the seeded global RNG. So a reply is the same, token for token, whatever else is decoded beside it
(tests/test_engine.py); only the rounding of a batched matrix product differs, which can tip a near tie.

The batch's cache is left-padded: rows end at the same column, a mask hides each row's padding, and each
row's positions count its own tokens. A joining row is padded (or pads the others) to the common width; a
leaving row is dropped, and columns that are padding in every remaining row are trimmed away.

Bounded: at most `max_batch` rows decode at once, at most `max_queue` requests wait behind them
(`submit` raises `QueueFull` beyond), and a cancelled request (a client that went away) leaves at the
next step.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from core.model.generation import Sampling, end_of_turn_ids, pick_tokens, processed_scores


class QueueFull(Exception):
    """Every row is busy and the queue behind them is full: ask again later."""


class Closed(Exception):
    """The engine is shutting down and takes no new request."""


@dataclass
class Event:
    """What a request's caller receives: text as it is decoded, then one `done` (or `error`)."""
    kind: str                       # "text" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None  # done: "stop" (end of turn or a stop string) | "length" | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Request:
    prompt: list[int]
    sampling: Sampling
    seed: int | None
    stop: list[str]
    sink: Callable[[Event], None]
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    sent: int = 0                   # characters of the reply already sent

    def cancel(self) -> None:
        """Leave at the next step (a client that disconnected): the row is freed, a `done` event follows."""
        self.cancelled = True


class Engine:
    """One model, one decoding thread, many requests."""

    def __init__(self, model, tokenizer, max_batch: int = 8, max_queue: int = 32):
        if model.config.is_encoder_decoder:
            raise ValueError("the built-in engine decodes decoder-only models")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.stop_ids = end_of_turn_ids(model, tokenizer)
        self._waiting: deque[Request] = deque()
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None    # [rows, columns]: 1 where the cache holds a real token
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # The callers' side ------------------------------------------------------------------------------

    def submit(self, prompt: list[int], sampling: Sampling, seed: int | None = None, stop: list[str] = (),
               sink: Callable[[Event], None] | None = None) -> Request:
        """Queue a reply to `prompt` (token ids); its events go to `sink` from the decoding thread."""
        request = Request(list(prompt), sampling, seed, [s for s in stop if s], sink or (lambda _: None))
        with self._wake:
            if self._closing:
                raise Closed("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._rows)} replies are being decoded and {len(self._waiting)} wait")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def events(self, prompt: list[int], sampling: Sampling, seed: int | None = None,
               stop: list[str] = ()) -> Iterator[Event]:
        """The events of one request, for a caller in its own thread (cancelled if the caller stops reading)."""
        return events_of(lambda sink: self.submit(prompt, sampling, seed, stop, sink))

    def reply(self, prompt: list[int], sampling: Sampling, seed: int | None = None, stop: list[str] = ()) -> str:
        """The whole reply, stripped as `generate_reply` strips it."""
        text = ""
        for event in self.events(prompt, sampling, seed, stop):
            if event.kind == "error":
                raise RuntimeError(event.text)
            text += event.text
        return text.strip()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._rows)

    def close(self, drain_seconds: float = 10.0) -> None:
        """Take no new request; finish those in flight and queued for up to `drain_seconds`, then end the rest."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(drain_seconds)
        with self._wake:
            self._drain_deadline_passed = True
            self._wake.notify()
        self._thread.join(5)

    # The decoding thread ------------------------------------------------------------------------------

    _drain_deadline_passed = False

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not (self._waiting or self._rows or self._closing):
                        self._wake.wait()
                    if self._drain_deadline_passed or (self._closing and not (self._waiting or self._rows)):
                        break
                    joining = [self._waiting.popleft() for _ in range(min(len(self._waiting),
                                                                         self.max_batch - len(self._rows)))]
                for request in joining:
                    self._guarded(request, lambda r=request: self._join(r))
                self._leave()
                if self._rows:
                    try:
                        self._step()
                    except Exception as err:  # noqa: BLE001 - one bad step must not stop the server
                        for row in self._rows:
                            row.finish(self, error=f"decoding failed: {type(err).__name__}: {err}")
                        self._leave()
            for request in list(self._waiting) + [row.request for row in self._rows]:
                request.sink(Event("done", finish_reason="cancelled", prompt_tokens=len(request.prompt),
                                   completion_tokens=len(request.tokens)))

    def _guarded(self, request: Request, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as err:  # noqa: BLE001 - a request that cannot be prefilled fails alone
            request.sink(Event("error", text=f"{type(err).__name__}: {err}"))

    def _join(self, request: Request) -> None:
        """Prefill the prompt alone (generate's first forward pass), pick its first token, and add its row."""
        if request.cancelled:
            request.sink(Event("done", finish_reason="cancelled", prompt_tokens=len(request.prompt)))
            return
        device = self.model.device
        ids = torch.tensor([request.prompt], dtype=torch.long, device=device)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            raise ValueError("the built-in engine batches full-attention caches only; serve this model with "
                             "--engine openai")
        row = _Row(request, self)
        self._pick([row], out.logits[:, -1].to(dtype=torch.float32))
        if row.done:
            return
        self._merge(cache, torch.ones_like(ids))
        self._rows.append(row)

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self._cache is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)])
        self._mask = torch.cat([_pad_left(self._mask, width, 1), _pad_left(mask, width, 1)])

    def _leave(self) -> None:
        """Drop finished and cancelled rows, and the columns that are padding in every row left."""
        for row in self._rows:
            if row.request.cancelled and not row.done:
                row.finish(self, "cancelled")
        keep = [i for i, row in enumerate(self._rows) if not row.done]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._mask = self._mask[index]
        start = int((self._mask.sum(0) > 0).nonzero()[0, 0])
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]

    def _step(self) -> None:
        """One token for every row: their last tokens through the model against the batch's cache."""
        device = self.model.device
        last = torch.tensor([[row.request.tokens[-1]] for row in self._rows], dtype=torch.long, device=device)
        mask = torch.cat([self._mask, torch.ones_like(last)], dim=1)
        positions = self._mask.sum(1, keepdim=True)
        columns = torch.tensor([self._mask.shape[1]], device=device)
        out = self.model(input_ids=last, attention_mask=mask, position_ids=positions, cache_position=columns,
                         past_key_values=self._cache, use_cache=True)
        self._mask = mask
        self._pick(self._rows, out.logits[:, -1].to(dtype=torch.float32))
        self._leave()

    def _pick(self, rows: list[_Row], scores: torch.Tensor) -> None:
        """Each row's next token from its raw scores, rows of the same sampling settings processed together."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(astuple(row.request.sampling), []).append(i)
        for members in groups.values():
            group = [rows[i] for i in members]
            sampling = group[0].request.sampling
            processed = processed_scores(scores[members], [r.request.prompt + r.request.tokens for r in group],
                                         [len(r.request.prompt) for r in group], sampling)
            for row, token in zip(group, pick_tokens(processed, sampling.greedy, [r.generator for r in group])):
                row.add(self, token)


def events_of(submit: Callable[[Callable[[Event], None]], Request]) -> Iterator[Event]:
    """A request's events, for a caller in its own thread; the request is cancelled if the caller stops reading."""
    inbox: queue.Queue[Event] = queue.Queue()
    request = submit(inbox.put)  # now, so that a full queue raises here

    def events() -> Iterator[Event]:
        try:
            while True:
                event = inbox.get()
                yield event
                if event.kind != "text":
                    return
        finally:
            request.cancel()
    return events()


class _Row:
    """A request being decoded: its processors, its generator, and how its text is sent."""

    def __init__(self, request: Request, engine: Engine):
        self.request, self.done = request, False
        self.generator = None
        if not request.sampling.greedy:
            self.generator = torch.Generator(device=engine.model.device)
            if request.seed is not None:
                self.generator.manual_seed(request.seed)
            else:
                self.generator.seed()

    def add(self, engine: Engine, token: int) -> None:
        """Take the next token, send the text it completes, and finish when due."""
        request = self.request
        if token in engine.stop_ids:
            self._send(self._text(engine), final=True)
            self.finish(engine, "stop")
            return
        request.tokens.append(token)
        text = self._text(engine)
        cut = min((at for at in (text.find(s) for s in request.stop) if at >= 0), default=-1)
        if cut >= 0:
            self._send(text[:cut], final=True)
            self.finish(engine, "stop")
        elif len(request.tokens) >= request.sampling.max_new_tokens:
            self._send(text, final=True)
            self.finish(engine, "length")
        else:
            self._send(text[:len(text) - _held_back(text, request.stop)])

    def _text(self, engine: Engine) -> str:
        return engine.tokenizer.decode(self.request.tokens, skip_special_tokens=True)

    def _send(self, text: str, final: bool = False) -> None:
        """The new part of the reply; until the end, less an unfinished character (a token may end inside one)."""
        text = text if final else text.rstrip("\ufffd")
        if len(text) > self.request.sent:
            self.request.sink(Event("text", text[self.request.sent:]))
            self.request.sent = len(text)

    def finish(self, engine: Engine, reason: str | None = None, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        request = self.request
        if error:
            request.sink(Event("error", text=error))
            return
        request.sink(Event("done", finish_reason=reason, prompt_tokens=len(request.prompt),
                           completion_tokens=len(request.tokens)))


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string (not sent yet)."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
               default=0)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
