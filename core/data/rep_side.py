"""The rep's side of a practice call: what a simulated rep sees (core/train/rollouts.py) and what
`--train_role rep` trains, one rendering for both.

The rep is briefed from the prospect's persona (the system prompt), and the roles swap: the rep's turns
become the assistant's (trained), the prospect's the user's. A model trained on that view is a rep
simulator whose prompts at practice time are exactly the prefixes it was trained on.
"""

from __future__ import annotations


def rep_brief(persona: str) -> str:
    """The rep's instructions, built from the prospect's persona."""
    return ("You are a sales rep on a practice call with a prospect. What you know of the prospect: "
            f"{persona} Speak only as the rep: one short turn at a time, ask questions, handle objections.")


def rep_view(messages: list[dict]) -> list[dict]:
    """A call (persona first, then rep and prospect turns) as the rep sees it: the brief, its own turns trained."""
    swap = {"user": "assistant", "assistant": "user"}
    return [{"role": "system", "content": rep_brief(messages[0]["content"])}] + [
        {"role": swap[m["role"]], "content": m["content"]} for m in messages[1:]]
