"""A practice call's reward components: pure functions over its text (numpy only), so that GRPO's reward
(core/train/objectives/rewards.py) and `evaluate --conversations` (core/use) compute the same numbers.

Each component is in [0, 1], higher is better, and is computed over the bot's turns of one call:

- role: share of the bot's turns the role judge reads as the bot's side (1 minus the role inversion rate).
- persona_named: 1 when the call names at least one fact of the persona (a name, number, quarter or month).
- persona_kept: share of the bot's turns contradicting no persona fact (own name, head count, budget, quarter).
- no_repetition: share of the bot's turns that repeat no sentence, within the turn or from earlier in the call.
- length: share of the bot's turns whose length in words lies within the data's range (its replies' 10th to
  90th percentile).

A "gives in too soon" realism term is not among them: the data holds no label of when a prospect gives in, so
no such term could be calibrated (docs/grpo.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.roleplay_metrics import (
    RoleJudge,
    contradictions,
    mentions,
    persona_facts,
    repeated_across,
    repeated_sentences,
    word_count,
)

COMPONENTS = ("role", "persona_named", "persona_kept", "no_repetition", "length")


@dataclass(frozen=True)
class LengthRange:
    """The words a bot turn of the data has, from its 10th to its 90th percentile."""
    low: int
    high: int

    @classmethod
    def of(cls, replies: list[str]) -> LengthRange:
        words = [word_count(r) for r in replies] or [0]
        return cls(int(np.percentile(words, 10)), int(np.ceil(np.percentile(words, 90))))

    def holds(self, reply: str) -> bool:
        return self.low <= word_count(reply) <= self.high


def call_components(replies: list[str], system: str, judge: RoleJudge, length: LengthRange) -> dict[str, float]:
    """The components of one call whose bot turns are `replies` (in order) under the persona `system`."""
    if not replies:
        return dict.fromkeys(COMPONENTS, 0.0)
    facts = persona_facts(system)
    earlier = repeated_across(replies)
    return {"role": float(np.mean([judge.is_bot(r) for r in replies])),
            "persona_named": float(bool(facts) and any(mentions(r, facts) for r in replies)),
            "persona_kept": float(np.mean([not contradictions(r, facts) for r in replies])) if facts else 1.0,
            "no_repetition": float(np.mean([not (repeated_sentences(r) or e) for r, e in zip(replies, earlier)])),
            "length": float(np.mean([length.holds(r) for r in replies]))}


def per_turn_rates(replies: list[str], system: str, judge: RoleJudge) -> dict[str, float]:
    """What `evaluate --conversations` reports of a call beside its reward: rates over its bot turns."""
    facts = persona_facts(system)
    earlier = repeated_across(replies)
    n = max(len(replies), 1)
    return {"role_inversion": sum(not judge.is_bot(r) for r in replies) / n,
            "persona_named": sum(bool(mentions(r, facts)) for r in replies) / n if facts else 0.0,
            "persona_contradicted": sum(bool(contradictions(r, facts)) for r in replies) / n if facts else 0.0,
            "repetition": sum(bool(repeated_sentences(r) or e) for r, e in zip(replies, earlier)) / n,
            "mean_words": sum(word_count(r) for r in replies) / n}
