"""Validate raw records (read by core/data/files.py) into conversations, by the --train_on, --system_prompt,
--merge_consecutive and --allow_extra_keys options (`FormatOptions`). The data side (core/data/) builds on this
module, which imports none of it: core/data/conversations.py streams a data file's records through it.

Three record formats, detected per record and mixable in one file:
  {"input": ..., "output": ..., "system"?: ...}                     the original pair format
  {"messages": [{"role": "system"|"user"|"assistant", "content": ..., "train"?: bool}, ...]}
  {"conversations": [{"from": "system"|"human"|"gpt", "value": ..., "train"?: bool}, ...]}  (ShareGPT)
Every problem is a `DataError` whose message names the file, the line (or list index) and the fault.
Nothing is skipped silently: blank JSONL lines are the only thing passed over.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from core.config import FormatOptions
from core.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# The keys each format defines; anything else is refused unless extra keys are allowed (a typo such as
# "sytem" or "trian" would otherwise be ignored and silently change what is trained).
RECORD_KEYS = {"output": ("input", "output", "system"), "messages": ("messages",), "conversations": ("conversations",)}
PREFERENCE_KEYS = ("chosen", "rejected", "completion", "label")  # core/data/preference.py reads these
TURN_KEYS = {"messages": ("role", "content", "train"), "conversations": ("from", "value", "train")}


@dataclass
class Message:
    role: str
    content: str
    train: bool = True  # only meaningful for assistant messages


@dataclass
class Conversation:
    messages: list[Message]
    where: str  # "file line N" or "file item N", for messages about this record
    merged: int = 0  # messages merged into their predecessor (--merge_consecutive)
    system_added: bool = False  # the --system_prompt default was applied

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def before_last_reply(self) -> tuple[list[dict[str, str]], str]:
        """(the conversation up to its last trained reply, that reply): a prompt and its reference."""
        chat = self.as_chat()
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant" and m.train)
        return chat[:last], chat[last]["content"]


@dataclass
class LoadStats:
    records: int = 0
    merged_records: int = 0
    system_added: int = 0
    formats: dict[str, int] = field(default_factory=dict)


def parse_record(where: str, record: object, options: FormatOptions) -> tuple[Conversation, str]:
    """Validate one parsed JSON value and return it as a conversation, with the name of its format."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    formats = [key for key in ("messages", "conversations", "output") if key in record]
    judged = [key for key in PREFERENCE_KEYS if key in record]
    if judged and not (options.allow_extra_keys and formats):
        raise DataError(f"{where}: {judged[0]!r} makes this a preference record (a pair of replies, or a reply "
                        "labelled good or bad), which only a preference objective trains: pass --objective dpo "
                        "(pairs) or --objective kto to train on it, or give a file of conversations here")
    if "input" in record and "output" not in record:
        raise DataError(f"{where}: missing 'output' (the bot's reply)")
    if len(formats) > 1:
        raise DataError(f"{where}: record mixes formats ({', '.join(repr(k) for k in formats)}); use one per record")
    if not formats:
        raise DataError(f"{where}: record has none of 'input'/'output', 'messages' or 'conversations'")
    kind = formats[0]
    if not options.allow_extra_keys:
        refuse_unknown_keys(where, record, RECORD_KEYS[kind])
    if kind == "output":
        messages = _pair_messages(where, record)
    else:
        messages = chat_messages(where, record[kind], kind, options.allow_extra_keys)
    if options.train_role == "rep":
        messages = rep_messages(where, messages, options.system_prompt)
    conversation = Conversation(messages, where)
    check_structure(conversation, options)
    return conversation, {"output": "input/output", "messages": "messages", "conversations": "sharegpt"}[kind]


def rep_messages(where: str, messages: list[Message], default_persona: str) -> list[Message]:
    """--train_role rep: the conversation as the rep sees it (rep_view below), the rep's turns trained."""
    persona = messages[0].content if messages and messages[0].role == "system" else default_persona
    if not persona.strip():
        raise DataError(f"{where}: no persona (a system message) to brief the rep from (--train_role rep); add one, "
                        "or pass --system_prompt")
    turns = [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]
    return [Message(m["role"], m["content"]) for m in rep_view([{"role": "system", "content": persona}, *turns])]


def refuse_unknown_keys(where: str, mapping: dict, known: tuple[str, ...]) -> None:
    for key in mapping:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(f"{where}: unknown key {key!r} ({hint}known keys: {', '.join(known)}); "
                            "pass --allow_extra_keys to accept extra keys")


def _text_field(where: str, record: dict, key: str, what: str) -> str:
    if key not in record:
        raise DataError(f"{where}: missing {key!r} ({what})")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _pair_messages(where: str, record: dict) -> list[Message]:
    user = _text_field(where, record, "input", "the user's message")
    bot = _text_field(where, record, "output", "the bot's reply")
    messages = [Message("user", user), Message("assistant", bot)]
    if "system" in record:
        messages.insert(0, Message("system", _text_field(where, record, "system", "the system prompt")))
    return messages


def chat_messages(where: str, turns: object, kind: str, allow_extra_keys: bool,
                   name: str | None = None) -> list[Message]:
    """`name`: the record's field holding the list, where it is not `kind` (a preference record's 'prompt')."""
    name = name or kind
    if not isinstance(turns, list):
        raise DataError(f"{where}: {name!r} must be a list of messages, got {type(turns).__name__}")
    role_key, text_key = ("role", "content") if kind == "messages" else ("from", "value")
    messages = []
    for index, turn in enumerate(turns):
        at = f"{where}: {name}[{index}]"
        if not isinstance(turn, dict):
            raise DataError(f"{at} must be an object, got {type(turn).__name__}")
        if not allow_extra_keys:
            refuse_unknown_keys(at, turn, TURN_KEYS[kind])
        if role_key not in turn:
            raise DataError(f"{at} has no {role_key!r}")
        raw_role = turn[role_key]
        role = raw_role if kind == "messages" and raw_role in ROLES else (
            SHAREGPT_ROLES.get(raw_role) if kind == "conversations" and isinstance(raw_role, str) else None)
        if role is None:
            allowed = ROLES if kind == "messages" else ("system", "human", "gpt")
            raise DataError(f"{at} has unknown {role_key} {raw_role!r}; expected one of {', '.join(allowed)}")
        if text_key not in turn:
            raise DataError(f"{at} has no {text_key!r}")
        text = turn[text_key]
        if not isinstance(text, str):
            raise DataError(f"{at} {text_key!r} must be a string, got {type(text).__name__}")
        train = turn.get("train", True)
        if not isinstance(train, bool):
            raise DataError(f"{at} 'train' must be true or false, got {train!r}")
        if not train and role != "assistant":
            raise DataError(f"{at} 'train': false is only meaningful on assistant messages")
        messages.append(Message(role, text, train))
    return messages


def check_structure(conversation: Conversation, options: FormatOptions) -> None:
    """Roles in a usable order, a non-empty reply to train on; apply the system and merge options."""
    where, messages = conversation.where, conversation.messages
    if not messages:
        raise DataError(f"{where}: conversation has no messages")
    for index, message in enumerate(messages[1:], start=1):
        if message.role == "system":
            raise DataError(f"{where}: message {index} is a system message; only the first message may be one")
    if messages[0].role != "system" and options.system_prompt:
        messages.insert(0, Message("system", options.system_prompt))
        conversation.system_added = True
    merged: list[Message] = []
    for index, message in enumerate(messages):
        if merged and merged[-1].role == message.role:
            if not options.merge_consecutive:
                raise DataError(f"{where}: messages {index - 1} and {index} are both {message.role!r}; "
                                "alternate the roles or pass --merge_consecutive")
            merged[-1].content += "\n\n" + message.content
            merged[-1].train = merged[-1].train and message.train
            conversation.merged += 1
        else:
            merged.append(message)
    conversation.messages = merged
    replies = [m for m in merged if m.role == "assistant"]
    if not replies:
        raise DataError(f"{where}: conversation has no assistant message to train on")
    for index, message in enumerate(merged):
        if message.role == "assistant" and not message.content.strip():
            raise DataError(f"{where}: empty output (assistant message {index} has no text)")
    if options.train_on == "last_assistant":
        for message in replies[:-1]:
            message.train = False
    if not any(m.train for m in replies):
        raise DataError(f"{where}: every assistant message has 'train': false; nothing to train on")


# The rep's side of a practice call: what a simulated rep sees (core/train/rollouts.py) and what `--train_role rep`
# trains, one rendering for both. The roles swap: the rep's turns become the assistant's (trained), the prospect's
# the user's, so a model trained on that view is a rep simulator whose practice-time prompts are its training prefixes.

def rep_brief(persona: str) -> str:
    """The rep's instructions, built from the prospect's persona."""
    return ("You are a sales rep on a practice call with a prospect. What you know of the prospect: "
            f"{persona} Speak only as the rep: one short turn at a time, ask questions, handle objections.")


def rep_view(messages: list[dict]) -> list[dict]:
    """A call (persona first, then rep and prospect turns) as the rep sees it: the brief, its own turns trained."""
    swap = {"user": "assistant", "assistant": "user"}
    return [{"role": "system", "content": rep_brief(messages[0]["content"])}] + [
        {"role": swap[m["role"]], "content": m["content"]} for m in messages[1:]]
