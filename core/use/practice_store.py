"""The practice apps' record in the team's store (core/store): a `Recorder` beside the feedback file's.

A session's call is opened in the store on its first message, each message is added as it is said (a reply
with its model, its sampling and how long it took to write), each judgement with its author, and the call is
closed when the session starts over or ends. The store commits every write before the method returns, so a
judgement the app acknowledged survives the app being killed.

By default the apps record only here (the store beside the model, `practice.db`); the JSONL feedback file is an
export (`train.py team export`), written as well only when `--feedback_file` is given (`Both`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

from core.errors import ConfigError
from core.outputs import Input
from core.store import Store, StoreError, User, default_store, open_store
from core.use.feedback import FeedbackFile, is_model_directory
from core.use.practice import Judgement, PracticeSession

HEAD = 1 << 20  # bytes of each model file read into its fingerprint, from each end


def open_practice_store(option: str, model: str, inputs: list[Input]) -> Store:
    """The store the apps record into: `--store` (a path or URL), else `practice.db` beside the model; an SQLite
    file is created on first use, but never as one of the command's inputs or inside a model directory."""
    target = option or str(default_store(model))
    if "://" not in target or target.startswith("sqlite:"):
        path = Path(target.removeprefix("sqlite:///")).expanduser().resolve()
        for given in inputs:
            source = given.path.expanduser().resolve()
            if path == source or source in path.parents:
                raise ConfigError(f"--store {target} is {'also' if path == source else 'inside'} the input "
                                  f"{given.option} {given.path}: choose a store outside it")
        holder = next((d for d in path.parents if is_model_directory(d)), None)
        if holder is not None:
            raise ConfigError(f"--store {target} lies inside the model directory {holder}: choose a store outside it")
    return open_store(target, create=True)


def fingerprint(model: str) -> str:
    """What identifies the model that answered: for a local model, a sha256 of its files' names, sizes and
    first and last MiB (the weights' header and some of their values: a retrained model differs); for a hub
    id or alias, its name."""
    path = Path(model).expanduser()
    files = sorted(p for p in (path.iterdir() if path.is_dir() else [path]) if p.is_file()) if path.exists() else []
    if not files:
        return f"name:{model}"
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(HEAD))
            if size > 2 * HEAD:
                handle.seek(-HEAD, 2)
                digest.update(handle.read(HEAD))
    return "sha256:" + digest.hexdigest()


class StoreRecorder:
    """One session's call in the store, made by `user` (None: the store's holder, a local single user).

    Each answering side is a call of its own in the store (with its model and fingerprint): training reads a call
    as one conversation, and two models' replies to the same rep line are two conversations. A rep's line is
    recorded in every side's call. `answering(side)` is called by the app just before it asks a side's model
    for a reply: the reply is recorded in that side's call with the sampling and its latency, the time from
    then until it is complete. A rewrite standing in for a reply is not a message of its own: the store's rewrite
    judgement already puts it in the reply's place when training reads the call (a second assistant message
    would make two bot turns in a row), so the stand-in keeps the reply's id and cannot be judged again. A reply
    that follows a reply taken back (Regenerate) starts a fresh call for its side, with the turns before it:
    the taken-back reply stays recorded in the old call, and no call holds two bot turns in a row.
    A store fault becomes an OSError (the session tells the user, and the call goes on), as the Recorder
    protocol asks."""

    def __init__(self, store: Store, user: User | None, models: list[str], sampling: dict, fingerprints: dict):
        self.store, self.user, self.models = store, user, models
        self.sampling, self.fingerprints = sampling, fingerprints
        self.started: float | None = None
        self.side = 0                      # the side whose reply comes next
        self.call_of: dict[int, int] = {}  # a reply's message id -> its call
        self.rewritten: int | None = None  # the reply a rewrite just replaced
        self.stand_ins: set[int] = set()

    @property
    def where(self) -> str:
        return f"the team's store ({self.store.where})"

    def answering(self, side: int = 0) -> None:
        self.started, self.side = time.monotonic(), side

    def open_call(self, session: PracticeSession) -> list[list]:
        """One [call id, next position, last role recorded] per side."""
        self.session = session
        return [self._new_call(model) for model in self.models[:len(session.sides)]]

    def _new_call(self, model: str) -> list:
        return [faulted(lambda: self.store.open_call(self.user, self.session.scenario, self.session.persona, model,
                                                     self.fingerprints[model])), 0, None]

    def message(self, calls: list[list], position: int, role: str, content: str, model: str | None) -> int:
        if role != "assistant":
            return [self._add(call, role, content, None, None, None) for call in calls][0]
        if self.rewritten is not None and self.started is None:  # the rewrite standing in: recorded already
            message, self.rewritten = self.rewritten, None
            self.stand_ins.add(message)
            return message
        latency = sampling = None  # a reply the model did not write now (shown again in a fresh session)
        if self.started is not None:
            latency, sampling, self.started = (time.monotonic() - self.started) * 1000, self.sampling, None
        call = calls[self.side]
        if call[2] == "assistant":  # the last reply was taken back: a fresh call from the turns before it
            self.close_call([call])
            call[:] = self._new_call(self.models[self.side])
            side = self.session.sides[self.side]
            for turn, author in zip(side.turns, side.authors):
                self._add(call, turn["role"], turn["content"], author, None, None)
        message = self._add(call, role, content, model, sampling, latency)
        self.call_of[message], self.side = call[0], 0
        return message

    def _add(self, call: list[int], role, content, model, sampling, latency) -> int:
        message = faulted(lambda: self.store.add_message(call[0], call[1], role, content, model, sampling, latency))
        call[1], call[2] = call[1] + 1, role
        return message

    def judgement(self, calls: list[list], judgement: Judgement) -> str:
        if judgement.message in self.stand_ins:
            raise OSError("this reply is your rewrite, recorded already; judge the next reply")
        call = self.call_of.get(judgement.message, calls[0][0])
        text = {"rewrite": judgement.text}.get(judgement.kind)
        faulted(lambda: self.store.add_judgement(call, judgement.message, judgement.kind, judgement.user or self.user,
                                                 text, judgement.other or None, judgement.other_model or None))
        if judgement.kind == "rewrite":  # the rewrite stands in next (see the class's docstring)
            self.rewritten = judgement.message
        return self.where

    def close_call(self, calls: list[list]) -> None:
        for call in calls:
            faulted(lambda call=call: self.store.close_call(call[0]))


class Both:
    """The store and, when `--feedback_file` is given, the feedback file as well (the store first: it is the
    record; the file is an export made as the judgements come)."""

    def __init__(self, store: StoreRecorder, file: FeedbackFile):
        self.store, self.file = store, file

    @property
    def where(self) -> str:
        return f"{self.store.where} and {self.file.path}"

    def answering(self, side: int = 0) -> None:
        self.store.answering(side)

    def open_call(self, session: PracticeSession) -> list[list]:
        return self.store.open_call(session)

    def message(self, calls: list[list], position: int, role: str, content: str, model: str | None) -> int:
        return self.store.message(calls, position, role, content, model)

    def judgement(self, calls: list[list], judgement: Judgement) -> str:
        where = self.store.judgement(calls, judgement)
        return f"{where} and {self.file.judgement(None, judgement)}"

    def close_call(self, calls: list[list]) -> None:
        self.store.close_call(calls)


def recorder_for(store: Store, user: User | None, models: list[str], sampling, fingerprints: dict,
                 file: FeedbackFile | None):
    recorder = StoreRecorder(store, user, models, asdict(sampling), fingerprints)
    return Both(recorder, file) if file is not None else recorder


def faulted(write):
    try:
        return write()
    except StoreError as err:
        raise OSError(f"the store refused it: {err}") from None
