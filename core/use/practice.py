"""One practice call, whichever client holds it (the terminal chat, the web app, the HTTP API to come).

A `PracticeSession` is the persona (and the scenario it came from), the turns so far, and one `Side` per model
answering: every side hears the same rep lines and keeps its own replies, so two models can be compared on
the same message. Judgements of a reply (good, bad, a rewrite, the better of two sides) become `Judgement`s in
the one schema the preference reader uses (core/data/preference.py) and go to a `Recorder`: the call is
opened when its first message is recorded, each message and judgement is recorded as it happens, and the
call is closed when the session starts over or ends. The feedback file (core/use/feedback.py) is one
recorder; a store-backed one (core/store) implements the same four methods.

A session holds no global state: an app holds one per user (or browser tab), and the models (`Answerer`)
are shared between them. Nothing here prints; the clients show what the methods return or raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from core.data.preference import judgement_record
from core.model.generation import Sampling, stream_reply

DESCRIBED = {"good": "a good reply", "bad": "a bad reply",
             "rewrite": "a better reply (a rewrite: a pair and an SFT record)", "pick": "the more realistic reply"}


class NotRecorded(ValueError):
    """A judgement or a line that cannot be taken as it is; the message says why (shown to the user)."""


@dataclass(frozen=True)
class Judgement:
    """A judgement of one reply, as a recorder receives it."""
    kind: str                       # good | bad | rewrite | pick
    context: list[dict]             # the persona and the turns before the judged reply
    reply: str                      # the judged reply (for pick: the one picked)
    model: str                      # the model that wrote it
    source: str                     # chat | web | api
    message: object = None          # the recorder's id of the judged reply (see Recorder.message)
    text: str = ""                  # rewrite: what a real prospect would have said
    other: str = ""                 # pick: the reply not picked
    other_model: str = ""
    other_message: object = None
    user: object = None             # who judged (a store User), when the client knows
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def record(self) -> dict:
        """The feedback file's line: a pair or a labelled reply, with who judged what in "meta"."""
        meta = {"model": self.model, "time": self.time, "source": self.source}
        if self.other_model:
            meta["other_model"] = self.other_model
        return judgement_record(self.kind, self.context, self.reply, meta, self.text, self.other)

    def sft_record(self) -> dict | None:
        """A rewrite is also the conversation as it should have gone: an SFT record."""
        if self.kind != "rewrite":
            return None
        return {"messages": self.context + [{"role": "assistant", "content": self.text}]}


class Recorder(Protocol):
    """Where a session's call goes: a feedback file, a team database. Each method returns once the record is
    durable; a failure raises OSError (the session tells the user, and the call goes on)."""

    def open_call(self, session: PracticeSession) -> object:
        """Start recording a call; returns its id, passed to the other methods."""

    def message(self, call: object, position: int, role: str, content: str, model: str | None) -> object:
        """Record one turn of the call (position counts from 0, in the order said); returns its id."""

    def judgement(self, call: object, judgement: Judgement) -> str:
        """Record a judgement; returns where it went, for the user ("runs/x/feedback.jsonl")."""

    def close_call(self, call: object) -> None:
        """The call ended (the user started over, left, or the app stopped)."""


@dataclass(frozen=True)
class Answerer:
    """A loaded model that answers as the prospect, through the one generation path."""
    name: str
    model: object
    tokenizer: object
    sampling: Sampling
    special_tokens: str = "refuse"  # "text": control-token text in the conversation is read as plain text

    def stream(self, messages: list[dict]) -> Iterator[str]:
        return stream_reply(self.model, self.tokenizer, messages, self.sampling, self.special_tokens)


@dataclass
class Side:
    """One model's side of the call: the turns it has seen and said, each with its recorded id and author."""
    label: str
    turns: list[dict] = field(default_factory=list)
    ids: list = field(default_factory=list)
    authors: list = field(default_factory=list)  # the model of each reply (None for the rep's lines)

    def last_reply(self) -> tuple[str, str, object]:
        if not self.turns or self.turns[-1]["role"] != "assistant":
            raise NotRecorded("there is no reply to judge yet")
        if not self.turns[-1]["content"].strip():
            raise NotRecorded("the reply is empty")
        return self.turns[-1]["content"], self.authors[-1], self.ids[-1]


def special_text_rule(pattern: re.Pattern | None, mode: str) -> Callable[[str, str], None]:
    """`--special_tokens` at practice time: under "refuse", text that spells a control token (`<|im_end|>`) is
    refused as training refuses it, so nothing recorded is a file training will not read."""
    def check(text: str, what: str) -> None:
        found = pattern.search(text) if pattern is not None and mode == "refuse" else None
        if found:
            raise NotRecorded(f"{what} contains the special token {found.group()!r}, which training refuses "
                              "(--special_tokens refuse): leave it out, or start with --special_tokens text")
    return check


def allow_all(text: str, what: str) -> None:
    """The rule when no tokenizer is at hand: every text is taken."""


class PracticeSession:
    """One practice call: persona, scenario, turns per answering side, and its judgements, recorded."""

    def __init__(self, recorder: Recorder, persona: str = "", scenario: str | None = None, sides: int = 1,
                 source: str = "chat", user: object = None, rule: Callable[[str, str], None] = allow_all):
        self.recorder, self.source, self.user, self.rule = recorder, source, user, rule
        rule(persona, "the persona")
        self.persona, self.scenario = persona, scenario
        self.sides = [Side(label) for label in "AB"[:sides]]
        self._call, self._position = None, 0

    # The conversation -----------------------------------------------------------------------------

    def messages(self, side: int = 0) -> list[dict]:
        """The conversation in the `messages` training format: the persona first, when there is one."""
        persona = [{"role": "system", "content": self.persona}] if self.persona else []
        return persona + list(self.sides[side].turns)

    def transcript(self, side: int = 0) -> dict:
        """The call as a training record (what /save and the web app's download write)."""
        return {"messages": self.messages(side)}

    def say(self, text: str) -> None:
        """The rep's line, heard by every side."""
        self.rule(text, "your message")
        self._add(self.sides, "user", text, None)

    def answer(self, side: int, answerer: Answerer) -> Iterator[str]:
        """The side's reply as it grows; the whole reply is a turn (and recorded) once it is complete."""
        reply = ""
        for piece in answerer.stream(self.messages(side)):
            reply += piece
            yield reply
        self._add([self.sides[side]], "assistant", reply.strip(), answerer.name)

    def take_back_replies(self) -> None:
        """Remove each side's last reply (to regenerate it)."""
        for side in self.sides:
            if side.turns and side.turns[-1]["role"] == "assistant":
                del side.turns[-1], side.ids[-1], side.authors[-1]

    def undo(self) -> bool:
        """Take back the rep's last line and the replies to it; False when there is nothing to take back."""
        if not any(side.turns for side in self.sides):
            return False
        for side in self.sides:
            last = max((i for i, t in enumerate(side.turns) if t["role"] == "user"), default=0)
            del side.turns[last:], side.ids[last:], side.authors[last:]
        return True

    def restart(self, persona: str | None = None, scenario: str | None = None) -> None:
        """Start over (with another persona): the call so far is closed."""
        if persona is not None:
            self.rule(persona, "the persona")
        self.close()
        if persona is not None:
            self.persona, self.scenario = persona, scenario
        for side in self.sides:
            side.turns, side.ids, side.authors = [], [], []

    def close(self) -> None:
        if self._call is not None:
            self.recorder.close_call(self._call)
        self._call, self._position = None, 0

    # Judgements -----------------------------------------------------------------------------------

    def judge(self, good: bool, side: int = 0) -> str:
        """Thumbs up or down on a side's last reply: a labelled reply. Returns where it was recorded."""
        reply, model, message = self.sides[side].last_reply()
        return self._judgement("good" if good else "bad", side, reply=reply, model=model, message=message)

    def rewrite(self, text: str, side: int = 0) -> str:
        """What a real prospect would have said instead: a pair, and an SFT record; the rewrite then stands in
        the conversation, which goes on from it."""
        reply, model, message = self.sides[side].last_reply()
        text = text.strip()
        if not text or text == reply.strip():
            raise NotRecorded("the rewrite is empty or the same as the reply")
        self.rule(text, "the rewrite")
        where = self._judgement("rewrite", side, reply=reply, model=model, message=message, text=text)
        judged = self.sides[side]
        del judged.turns[-1], judged.ids[-1], judged.authors[-1]
        self._add([judged], "assistant", text, model)  # the turn stays the model's, as the rep would have it
        return where

    def prefer(self, picked: int) -> str:
        """Of two sides' replies to the same rep line, the more realistic: a pair."""
        if len(self.sides) < 2 or any(len(s.turns) < 2 for s in self.sides) or \
                self.sides[0].turns[-2] != self.sides[1].turns[-2]:
            raise NotRecorded("compare two models' replies to the same message first")
        reply, model, message = self.sides[picked].last_reply()
        other, other_model, other_message = self.sides[1 - picked].last_reply()
        if reply.strip() == other.strip():
            raise NotRecorded("the two replies are the same")
        return self._judgement("pick", picked, reply=reply, model=model, message=message, other=other,
                               other_model=other_model, other_message=other_message)

    def _judgement(self, kind: str, side: int, **fields) -> str:
        self.rule(fields["reply"], "the reply")
        if fields.get("other"):
            self.rule(fields["other"], "the other reply")
        judgement = Judgement(kind, self.messages(side)[:-1], source=self.source, user=self.user, **fields)
        return self.recorder.judgement(self._open(), judgement)

    # Recording ------------------------------------------------------------------------------------

    def show(self, histories: list[list[dict]], authors: list[str]) -> None:
        """Start a fresh session from the turns a client already shows (the web page's chats, each side's
        replies written by its model): they are recorded as the call's first messages."""
        for side, turns, author in zip(self.sides, histories, authors):
            for turn in turns:
                self._add([side], turn["role"], turn["content"], author if turn["role"] == "assistant" else None)

    def _open(self) -> object:
        """The call's id, opening it on first use."""
        if self._call is None:
            self._call = self.recorder.open_call(self)
        return self._call

    def _add(self, sides: list[Side], role: str, content: str, author: str | None) -> None:
        """A turn of these sides, recorded once (a rep line heard by two models is one message)."""
        message = self.recorder.message(self._open(), self._position, role, content, author)
        self._position += 1
        for side in sides:
            side.turns.append({"role": role, "content": content})
            side.ids.append(message)
            side.authors.append(author)


def recorded(action: Callable[[], str], what: str) -> str:
    """What the user is told of a judgement: where it went, or why nothing was recorded (the call goes on)."""
    try:
        where = action()
    except NotRecorded as err:
        return f"Nothing recorded: {err}."
    except OSError as err:
        return f"Could not record {what}: {err.strerror or err}"
    return f"Recorded {what} in {where}."
