"""Practice calls of the bot against a simulated rep, batched through the one generation path
(core/model/generation.py: the chat template, the end-of-turn stop, the KV cache, left-padded batches).

A scenario is a persona (the system prompt the bot plays) and the rep's turns of a recorded call. The rep
opens with the first; then bot and rep take turns until the bot has spoken `bot_turns` times or the rep has
nothing more to say. Two simulated reps:

- `ReplayedRep`: the scenario's own rep turns, in order (no model; what `evaluate --conversations` does too).
- `PromptedRep`: a chat model (any, or one trained with `--train_role rep`) playing the rep from a brief built
  from the persona. It sees the call through `core.dataset.rep_view`: the brief as system prompt, its own
  turns as the assistant's and the bot's as the user's, rendered by its chat template with the generation
  prompt, which is exactly the prefix a `--train_role rep` run puts before each rep turn (tests/test_grpo.py),
  sampled with its own settings.

`roll_out` samples each turn of its calls from a seed derived from the one it is given and the turn; GRPO gives
each scenario's group a seed derived from the run's seed, the step and the scenario, so a resumed run rolls out
the very calls an uninterrupted one would, with no generator state to restore.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from core.data.chat_format import ChatEncoder
from core.dataset import Conversation, Message, rep_view
from core.errors import DataError
from core.model.generation import Sampling, generate_replies
from core.model.prepare import set_stop_tokens


@dataclass(frozen=True)
class Scenario:
    system: str                 # the persona the bot plays
    rep_turns: tuple[str, ...]  # the recorded call's rep turns; the first opens the call
    where: str


@dataclass
class Call:
    scenario: Scenario
    messages: list[dict]        # system, rep, bot, rep, bot, ...

    @property
    def bot_replies(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "assistant"]


def scenarios_from(conversations) -> list[Scenario]:
    """One scenario per conversation; a conversation without a persona or a rep turn is refused, naming it."""
    out = []
    for conversation in conversations:
        messages = conversation.messages
        system = messages[0].content if messages and messages[0].role == "system" else ""
        rep = tuple(m.content for m in messages if m.role == "user")
        if not system.strip():
            raise DataError(f"{conversation.where}: no persona (a system message): each scenario of --objective grpo "
                            "needs the persona the bot plays; add one, or pass --system_prompt")
        if not rep:
            raise DataError(f"{conversation.where}: no rep turn (user message) to open the call with; add one")
        out.append(Scenario(system, rep, conversation.where))
    return out


def seed_for(*parts) -> int:
    """A sampling seed from anything printable: the same parts, the same seed, in any process."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def as_conversation(messages: list[dict], where: str = "rollout") -> Conversation:
    """A call as a training record: every assistant turn trained."""
    return Conversation([Message(m["role"], m["content"], m["role"] == "assistant") for m in messages], where)


class ReplayedRep:
    """The scenario's own rep turns, in order."""

    def next_turns(self, calls: list[Call], turn: int, seed: int) -> list[str | None]:
        return [c.scenario.rep_turns[turn] if turn < len(c.scenario.rep_turns) else None for c in calls]


class PromptedRep:
    """A chat model playing the rep from its brief, with its own sampling settings."""

    def __init__(self, model, tokenizer, sampling: Sampling, batch_size: int = 16):
        self.model, self.tokenizer, self.sampling, self.batch_size = model, tokenizer, sampling, batch_size
        probe = ChatEncoder(tokenizer, 4096, "text")
        probe.encode(as_conversation(rep_view([{"role": "system", "content": "x"}, {"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Hello"}])))
        set_stop_tokens(model, tokenizer, sorted(probe.end_of_turn_ids))  # the rep stops at its turn's end

    def next_turns(self, calls: list[Call], turn: int, seed: int) -> list[str | None]:
        return generate_replies(self.model, self.tokenizer, [rep_view(c.messages) for c in calls], self.sampling,
                                seed, self.batch_size)


def roll_out(model, tokenizer, scenarios: list[Scenario], generations: int, bot_turns: int, rep, sampling: Sampling,
             seed: int, batch_size: int = 16) -> list[Call]:
    """`generations` calls per scenario (scenario after scenario), all calls' turns generated together."""
    calls = [Call(s, [{"role": "system", "content": s.system}, {"role": "user", "content": s.rep_turns[0]}])
             for s in scenarios for _ in range(generations)]
    active = list(calls)
    for turn in range(bot_turns):
        replies = generate_replies(model, tokenizer, [c.messages for c in active], sampling,
                                   seed_for(seed, "bot", turn), batch_size)
        for call, reply in zip(active, replies):
            call.messages.append({"role": "assistant", "content": reply})
        if turn + 1 == bot_turns:
            break
        answers = rep.next_turns(active, turn + 1, seed_for(seed, "rep", turn))
        for call, answer in zip(active, answers):
            if answer is not None:
                call.messages.append({"role": "user", "content": answer})
        active = [c for c, a in zip(active, answers) if a is not None]
    return calls
