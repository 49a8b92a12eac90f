"""`train.py chat`: a roleplay practice call in the terminal, with the reply streamed as it is written.

Type as the sales rep; the model answers as the prospect. Commands start with a slash:
  /new               start over with a new prospect (the same persona, a fresh conversation)
  /undo              take back your last message and the prospect's reply
  /persona TEXT      switch to another persona (and start over); /persona N picks scenario N
  /personas          list the scenarios of --scenarios
  /save FILE         append this conversation to FILE as a training record (JSONL, `messages` format)
  /good, /bad        judge the prospect's last reply: realistic or not (appended to the feedback file)
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
from core.use import backend, feedback
from core.use.chat import ChatOptions, Scenario, as_record, load_scenarios
from core.utils import stage


@dataclass
class ChatConfig(ChatOptions):
    seed: int = option(-1, "seed for sampling (-1: a different conversation every time)")
    backend_url: str = option("", "an OpenAI-compatible server to practise against instead of --model: "
                                  "its base URL, such as http://127.0.0.1:8000/v1 (serve, vLLM, llama-server, Ollama)")

    def validate(self) -> None:
        if self.backend_url and not self.model:
            self.model = self.backend_url  # what the banner and the judgements name
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


class Session:
    """One practice call: the persona and the turns so far."""

    def __init__(self, scenarios: list[Scenario], system: str, inputs: list[Input] = (), model: str = "",
                 feedback_path: Path | None = None):
        self.scenarios = scenarios
        self.system = system
        self.inputs = list(inputs)  # what /save may not write over or into
        self.turns: list[dict] = []
        self.model, self.feedback_path = model, feedback_path

    def messages(self) -> list[dict]:
        return as_record(self.system, self.turns)["messages"]

    def command(self, line: str) -> str:
        """Carry out a slash command; return what to tell the user."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name == "new":
            self.turns = []
            return "New prospect: the conversation starts over."
        if name == "undo":
            if not self.turns:
                return "Nothing to undo."
            self.turns = self.turns[:-2]
            return "Took back your last message and the reply."
        if name == "personas":
            return "\n".join(f"  {i}: {s.name}" for i, s in enumerate(self.scenarios, 1)) or "No --scenarios given."
        if name == "persona":
            return self._switch(argument)
        if name == "save":
            return self._save(argument)
        if name in ("good", "bad", "better"):
            return self._judge(name, argument)
        return __doc__.split("\n\n", 1)[1].strip()

    def _switch(self, argument: str) -> str:
        if argument.isdigit() and 1 <= int(argument) <= len(self.scenarios):
            scenario = self.scenarios[int(argument) - 1]
            self.system, self.turns = scenario.system, []
            return f"Persona: {scenario.name}. The conversation starts over."
        if not argument:
            return "Usage: /persona TEXT, or /persona N for scenario N (/personas lists them)."
        self.system, self.turns = argument, []
        return "New persona. The conversation starts over."

    def _judge(self, name: str, argument: str) -> str:
        """Append a judgement of the last reply to the feedback file."""
        if self.feedback_path is None:
            return "No feedback file."
        if name == "better" and not argument:
            return "Usage: /better TEXT (what a real prospect would have said)"
        try:
            if name == "better":
                feedback.rewrite(self.feedback_path, self.messages(), argument, self.model, "chat")
                if self.turns:
                    self.turns[-1] = {"role": "assistant", "content": argument}  # the call goes on from the rewrite
            else:
                feedback.judge(self.feedback_path, self.messages(), name == "good", self.model, "chat")
        except ValueError as err:
            return f"Nothing recorded: {err}."
        except OSError as err:
            return f"Could not write to {self.feedback_path}: {err.strerror or err}"
        what = {"good": "a good reply", "bad": "a bad reply", "better": "a better reply (pair and SFT record)"}[name]
        return f"Recorded {what} in {self.feedback_path}."

    def _save(self, argument: str) -> str:
        if not argument:
            return "Usage: /save FILE.jsonl"
        if not any(t["role"] == "assistant" for t in self.turns):
            return "Nothing to save yet: the prospect has not replied."
        path = Path(argument).expanduser()
        try:
            check_output("/save", path, self.inputs, is_transcript, "a file of saved conversations")
        except ConfigError as err:
            return f"Not saved: {err}"
        try:
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(as_record(self.system, self.turns), ensure_ascii=False) + "\n")
        except OSError as err:
            return f"Could not save to {path}: {err.strerror}"
        return f"Saved this conversation to {path} as a training record."


def chat(config: ChatConfig) -> int:
    scenarios = load_scenarios(config.scenarios) if config.scenarios else []
    system = config.system_prompt or (scenarios[0].system if scenarios else "")
    replier = backend.open_backend(config.model, config.backend_url, config)
    inputs = local_inputs("--model", config.model) + local_inputs("--scenarios", config.scenarios)
    feedback_path = Path(config.feedback_file) if config.feedback_file else feedback.default_feedback_file(config.model)
    session, sampling = Session(scenarios, system, inputs, config.model, feedback_path), config.sampling()
    print(f"Practice call with {replier.name}. You are the rep; /help lists the commands, /quit ends; "
          f"/good, /bad and /better judge a reply (into {feedback_path}).")
    if system:
        print(f"Persona: {system}")
    with stage("chatting", "nothing was saved (/save FILE appends a conversation)"):
        return converse(config, session, replier, sampling)


def converse(config: ChatConfig, session: Session, replier: backend.Backend, sampling) -> int:
    while True:
        try:
            line = input("rep> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line.startswith("/"):
            print(session.command(line))
            continue
        if not line:
            continue
        session.turns.append({"role": "user", "content": line})
        seed = config.seed + len(session.turns) if config.seed >= 0 else None
        print("prospect> ", end="", flush=True)
        reply = ""
        for piece in backend.stream(replier, session.messages(), sampling, seed):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        session.turns.append({"role": "assistant", "content": reply.strip()})
