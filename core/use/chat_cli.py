"""`train.py chat`: a roleplay practice call in the terminal, with the reply streamed as it is written.

Type as the sales rep; the model answers as the prospect. Commands start with a slash:
  /new               start over with a new prospect (the same persona, a fresh conversation)
  /undo              take back your last message and the prospect's reply
  /persona TEXT      switch to another persona (and start over); /persona N picks scenario N
  /personas          list the scenarios of --scenarios
  /save FILE         append this conversation to FILE as a training record (JSONL, `messages` format)
  /good, /bad        judge the prospect's last reply: realistic or not (recorded in the team's store)
  /better TEXT       what a real prospect would have said instead (a preference pair, and an SFT record)
  /help, /quit
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from core.config import option
from core.errors import ConfigError
from core.outputs import Input, check_output, local_inputs
from core.use.chat import ChatOptions, Scenario, feedback_recorder, load_answerer, load_scenarios, text_rule
from core.use.practice import DESCRIBED, Answerer, NotRecorded, PracticeSession, recorded
from core.use.practice_store import fingerprint, open_practice_store, recorder_for
from core.use.team import acting_user
from core.utils import stage


@dataclass
class ChatConfig(ChatOptions):
    seed: int = option(-1, "seed for sampling (-1: a different conversation every time)")
    user: str = option("", "record the call as this user of the store (password asked for, or stdin's first line)")

    def validate(self) -> None:
        super().validate()
        if not -1 <= self.seed < 2**62:
            raise ConfigError(f"--seed must be -1 (a random conversation) or from 0 to below 2**62, got {self.seed}")


def is_transcript(path: Path) -> bool:
    """A file of earlier /save output (or an empty one): every line a `messages` training record."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return all(isinstance(r := json.loads(line), dict) and set(r) == {"messages"} for line in lines)
    except (OSError, ValueError, RecursionError):
        return False


class Commands:
    """The slash commands of a terminal practice call, carried out on its session."""

    def __init__(self, session: PracticeSession, scenarios: list[Scenario], inputs: list[Input] = ()):
        self.session, self.scenarios = session, scenarios
        self.inputs = list(inputs)  # what /save may not write over or into

    def run(self, line: str) -> str:
        """Carry out a slash command; return what to tell the user."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name == "new":
            self.session.restart()
            return "New prospect: the conversation starts over."
        if name == "undo":
            return "Took back your last message and the reply." if self.session.undo() else "Nothing to undo."
        if name == "personas":
            return "\n".join(f"  {i}: {s.name}" for i, s in enumerate(self.scenarios, 1)) or "No --scenarios given."
        if name == "persona":
            return self._switch(argument)
        if name == "save":
            return self._save(argument)
        if name in ("good", "bad"):
            return recorded(lambda: self.session.judge(name == "good"), DESCRIBED[name])
        if name == "better":
            if not argument:
                return "Usage: /better TEXT (what a real prospect would have said)"
            return recorded(lambda: self.session.rewrite(argument), DESCRIBED["rewrite"])
        return __doc__.split("\n\n", 1)[1].strip()

    def _switch(self, argument: str) -> str:
        if argument.isdigit() and 1 <= int(argument) <= len(self.scenarios):
            scenario = self.scenarios[int(argument) - 1]
            self.session.restart(scenario.system, scenario.name)
            return f"Persona: {scenario.name}. The conversation starts over."
        if not argument:
            return "Usage: /persona TEXT, or /persona N for scenario N (/personas lists them)."
        try:
            self.session.restart(argument)
        except NotRecorded as err:
            return f"Persona unchanged: {err}."
        return "New persona. The conversation starts over."

    def _save(self, argument: str) -> str:
        if not argument:
            return "Usage: /save FILE.jsonl"
        if not any(t["role"] == "assistant" for t in self.session.sides[0].turns):
            return "Nothing to save yet: the prospect has not replied."
        path = Path(argument).expanduser()
        try:
            check_output("/save", path, self.inputs, is_transcript, "a file of saved conversations")
        except ConfigError as err:
            return f"Not saved: {err}"
        try:
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(self.session.transcript(), ensure_ascii=False) + "\n")
        except OSError as err:
            return f"Could not save to {path}: {err.strerror}"
        return f"Saved this conversation to {path} as a training record."


def chat(config: ChatConfig) -> int:
    scenarios = load_scenarios(config.scenarios) if config.scenarios else []
    inputs = local_inputs("--model", config.model) + local_inputs("--scenarios", config.scenarios)
    file = feedback_recorder(config, inputs)
    store = open_practice_store(config.store, config.model, inputs)
    try:
        user = acting_user(store, config.user or None)
        answerer = load_answerer(config.model, config, config.backend_url)
        rule = text_rule(answerer, config, scenarios)
        recorder = recorder_for(store, user, [config.model], config.sampling(),
                                {config.model: fingerprint(config.model)}, file)
        first = scenarios[0] if scenarios and not config.system_prompt else None
        session = PracticeSession(recorder, config.system_prompt or (first.system if first else ""),
                                  first.name if first else None, source="chat", user=user, rule=rule)
        print(f"Practice call with {answerer.name}. You are the rep; /help lists the commands, /quit ends; "
              f"/good, /bad and /better judge a reply. The call is recorded in {recorder.where}"
              f"{f' as {user.name}' if user else ''}.")
        if session.persona:
            print(f"Persona: {session.persona}")
        try:
            with stage("chatting", f"the call so far is recorded in {recorder.where}"):
                return converse(config, Commands(session, scenarios, inputs), answerer)
        finally:
            session.close()
    finally:
        store.close()


def converse(config: ChatConfig, commands: Commands, answerer: Answerer) -> int:
    session = commands.session
    while True:
        try:
            line = input("rep> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line.startswith("/"):
            print(commands.run(line))
            continue
        if not line:
            continue
        try:
            session.say(line)
        except NotRecorded as err:
            print(f"Not sent: {err}.")
            continue
        seed = config.seed + len(session.sides[0].turns) if config.seed >= 0 else None
        print("prospect> ", end="", flush=True)
        shown = ""
        session.recorder.answering()
        for reply in session.answer(0, answerer, seed):
            sys.stdout.write(reply[len(shown):])
            sys.stdout.flush()
            shown = reply
        print()
