"""Does a reply behave like the prospect? Role consistency, repetition, length realism, persona grounding.

Pure functions over text (numpy only), so the samples written during training (core/train) and
`evaluate` and the report (core/use) compute the same numbers. They live on the data floor because
the role judge is learned from the data's own turns, and core/train may not import core/use.

- role consistency: the share of replies a judge reads as the bot's side. The judge (`RoleJudge`) is a
  multinomial naive Bayes over word unigrams and bigrams, trained on the data's assistant turns
  against its user turns; `role_judge` holds out a fifth of the records and reports its accuracy there.
- repetition: sentences repeated within a reply, sentences of a reply already said in an earlier reply
  of the same conversation, and distinct-1/distinct-2 (unique n-grams over all n-grams) of the replies.
- length realism: reply length in words against the reference reply's: the mean ratio, and the share
  of replies within half to twice their reference.
- persona grounding: facts read from the persona (names, numbers with their units, quarters, months,
  the persona's own name); a reply mentions the persona when it names one of them, and contradicts it
  when it gives itself another name, another head count or a budget amount the persona does not state,
  or another quarter. Rules, not a model: tests/data/test_roleplay_metrics.py checks them on labelled replies.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[a-z0-9$']+")
ROLE_JUDGE_METHOD = ("naive Bayes on word unigrams and bigrams, trained on the data's assistant turns against its "
                     "user turns; accuracy on the turns of a held-out fifth of the records")


# Repetition --------------------------------------------------------------------------------------

def sentences(text: str) -> list[str]:
    """Sentences, normalised (lower case, words only) so that punctuation and spacing do not hide a repeat."""
    return [s for s in (" ".join(WORD.findall(part.lower())) for part in SENTENCE_END.split(text)) if s]


def repeated_sentences(reply: str) -> int:
    """Sentences of the reply that it has already said."""
    said = sentences(reply)
    return len(said) - len(set(said))


def repeated_across(replies: list[str]) -> list[int]:
    """Per reply of one conversation, its sentences already said in an earlier reply."""
    seen: set[str] = set()
    counts = []
    for reply in replies:
        said = set(sentences(reply))
        counts.append(len(said & seen))
        seen |= said
    return counts


def distinct_n(replies: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of the replies (1.0: nothing repeats; NaN: no n-grams)."""
    grams = [tuple(words[i:i + n]) for words in (WORD.findall(r.lower()) for r in replies)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


# Length ------------------------------------------------------------------------------------------

def word_count(text: str) -> int:
    return len(WORD.findall(text.lower()))


def length_ratio(reply: str, reference: str) -> float:
    return word_count(reply) / max(word_count(reference), 1)


# Role judge --------------------------------------------------------------------------------------

def features(text: str) -> list[str]:
    words = WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


@dataclass
class RoleJudge:
    """P(the bot's side | text) by multinomial naive Bayes; `accuracy` is on held-out turns (None: not measured)."""
    log_odds: dict[str, float] = field(default_factory=dict)   # log P(f | bot) - log P(f | user)
    prior: float = 0.0                                          # log P(bot) - log P(user)
    accuracy: float | None = None
    held_out_turns: int = 0

    @classmethod
    def fit(cls, bot_turns: list[str], user_turns: list[str]) -> RoleJudge:
        bot, user = Counter(), Counter()
        for text in bot_turns:
            bot.update(features(text))
        for text in user_turns:
            user.update(features(text))
        vocabulary = set(bot) | set(user)
        bot_total, user_total = sum(bot.values()) + len(vocabulary), sum(user.values()) + len(vocabulary)
        log_odds = {f: math.log((bot[f] + 1) / bot_total) - math.log((user[f] + 1) / user_total) for f in vocabulary}
        prior = math.log(max(len(bot_turns), 1) / max(len(user_turns), 1))
        return cls(log_odds, prior)

    def score(self, text: str) -> float:
        """Log odds that `text` is the bot's turn (positive: the bot's side)."""
        return self.prior + sum(self.log_odds.get(f, 0.0) for f in features(text))

    def is_bot(self, text: str) -> bool:
        return self.score(text) > 0

    def to_dict(self) -> dict:
        return {"method": ROLE_JUDGE_METHOD, "accuracy": self.accuracy, "held_out_turns": self.held_out_turns}


def turns_by_side(records: list[dict]) -> tuple[list[str], list[str]]:
    """(assistant turns, user turns) of records shaped {"messages": [...], "reference": reply}."""
    bot, user = [], []
    for record in records:
        for message in record["messages"]:
            (bot if message["role"] == "assistant" else user if message["role"] == "user" else []).append(
                message["content"])
        bot.append(record["reference"])
    return bot, user


def role_judge(records: list[dict], seed: int = 0) -> RoleJudge:
    """A judge trained on four fifths of the records' turns, its accuracy measured on the rest (both sides)."""
    order = np.random.default_rng(seed).permutation(len(records))
    n_test = len(records) // 5 if len(records) >= 5 else 0
    test, train = [records[i] for i in order[:n_test]], [records[i] for i in order[n_test:]]
    judge = RoleJudge.fit(*turns_by_side(train))
    bot, user = turns_by_side(test)
    if bot and user:  # the mean of both sides' accuracies, so a judge that says "bot" to everything scores 0.5
        judge.accuracy = (np.mean([judge.is_bot(t) for t in bot]) + np.mean([not judge.is_bot(t) for t in user])) / 2
        judge.accuracy = float(judge.accuracy)
        judge.held_out_turns = len(bot) + len(user)
    return judge


# Persona grounding -------------------------------------------------------------------------------

NUMBER = r"(?<![A-Za-z\d])\d[\d,]*(?:\.\d+)?"
MONEY = re.compile(rf"\$\s?({NUMBER})\s*(k|m|thousand|million)?\b|\b({NUMBER})\s*(k|thousand|million)?\s*dollars\b",
                   re.I)
HEADCOUNT = re.compile(rf"\b({NUMBER})[- ](?:person|people|employees?|staff|seats?|users?)\b|\b({NUMBER})[- ]strong\b",
                       re.I)
QUARTER = re.compile(r"\bQ([1-4])\b")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
OWN_NAME = re.compile(r"\b(?:you are|your name is|roleplay as)\s+([A-Z][a-z]+)", re.I)
SELF_NAME = re.compile(r"\b(?i:i'm|i am|my name is|this is)\s+([A-Z][a-z]+)\b")
NAME = re.compile(r"\b[A-Z][a-zA-Z]+(?:\s+[A-Z][a-zA-Z]+)*")
NOT_NAMES = {"you", "your", "the", "a", "an", "roleplay", "stay", "never", "i", "they", "he", "she", "we", "it",
             "if", "when", "ask", "answer", "keep", "be", "do", "don't", "only", "always", "respond", "reply"}
GENERIC_WORDS = {"group", "foundation", "labs", "inc", "company", "corp", "partners", "services", "systems",
                 "solutions", "auto", "health", "school", "center", "clinic", "transport", "logistics", "capital"}
REP_SENTENCE = re.compile(r"\b(rep|representative|the user|salesperson)\b", re.I)
BUDGET_WORDS = re.compile(r"\b(budget|spend|afford|cap|ceiling|allocated)\b", re.I)


def _amount(number: str, scale: str | None) -> float:
    value = float(number.replace(",", ""))
    return value * {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6}.get((scale or "").lower(), 1)


def money_amounts(text: str) -> set[float]:
    return {_amount(m.group(1) or m.group(3), m.group(2) or m.group(4)) for m in MONEY.finditer(text)}


def headcounts(text: str) -> set[int]:
    return {int(float((m.group(1) or m.group(2)).replace(",", ""))) for m in HEADCOUNT.finditer(text)}


@dataclass
class PersonaFacts:
    own_name: str | None = None
    names: set[str] = field(default_factory=set)         # people, companies, places, products (lower case)
    headcounts: set[int] = field(default_factory=set)
    budgets: set[float] = field(default_factory=set)       # amounts stated in a sentence about the budget
    quarters: set[str] = field(default_factory=set)
    months: set[str] = field(default_factory=set)
    numbers: set[str] = field(default_factory=set)         # every number, as written

    def __bool__(self) -> bool:
        return bool(self.names or self.headcounts or self.budgets or self.quarters or self.months or self.numbers)


def persona_facts(system: str) -> PersonaFacts:
    """The checkable facts of a persona; sentences about the rep (their name, their company) are left out."""
    facts = PersonaFacts()
    own = OWN_NAME.search(system)
    facts.own_name = own.group(1).lower() if own and own.group(1).lower() not in NOT_NAMES else None
    for sentence in SENTENCE_END.split(system):
        if REP_SENTENCE.search(sentence):
            continue
        for match in NAME.finditer(sentence):
            words = [w for w in match.group().split() if w.lower() not in NOT_NAMES]
            if words and not (match.start() == 0 and len(words) == 1 and len(match.group().split()) == 1):
                facts.names.add(" ".join(words).lower())
                facts.names.update(w.lower() for w in words if len(w) > 2 and w.lower() not in GENERIC_WORDS)
        facts.headcounts |= headcounts(sentence)
        if BUDGET_WORDS.search(sentence):
            facts.budgets |= money_amounts(sentence)
        facts.quarters |= {q.group(0).upper() for q in QUARTER.finditer(sentence)}
        facts.months |= {m for m in MONTHS if re.search(rf"\b{m}\b", sentence, re.I)}
        facts.numbers |= set(re.findall(NUMBER, sentence))
    facts.names -= set(MONTHS)
    return facts


def mentions(reply: str, facts: PersonaFacts) -> list[str]:
    """The persona facts a reply names."""
    lower = reply.lower()
    found = [n for n in sorted(facts.names) if re.search(rf"\b{re.escape(n)}\b", lower)]
    found += [q for q in sorted(facts.quarters) if re.search(rf"\b{q}\b", reply, re.I)]
    found += [m for m in sorted(facts.months) if re.search(rf"\b{m}\b", lower)]
    found += [n for n in sorted(facts.numbers) if re.search(rf"(?<![\d,.]){re.escape(n)}(?![\d,]*\d)", reply)]
    return found


def contradictions(reply: str, facts: PersonaFacts) -> list[str]:
    """Statements in the reply that the persona's facts rule out."""
    found = []
    for match in SELF_NAME.finditer(reply):
        name = match.group(1).lower()
        if facts.own_name and name != facts.own_name and name not in NOT_NAMES and name not in facts.names:
            found.append(f"calls itself {match.group(1)} (the persona is {facts.own_name.title()})")
    for count in headcounts(reply) - facts.headcounts if facts.headcounts else ():
        found.append(f"head count {count} (the persona's: {', '.join(map(str, sorted(facts.headcounts)))})")
    for sentence in SENTENCE_END.split(reply):
        if facts.budgets and BUDGET_WORDS.search(sentence):
            for amount in money_amounts(sentence) - facts.budgets:
                found.append(f"budget {amount:g} (the persona's: {', '.join(f'{b:g}' for b in sorted(facts.budgets))})")
    if facts.quarters:
        found += [f"{q} (the persona's: {', '.join(sorted(facts.quarters))})"
                  for q in sorted({m.group(0).upper() for m in QUARTER.finditer(reply)} - facts.quarters)]
    return found


# One set of replies ------------------------------------------------------------------------------

def system_prompt(messages: list[dict]) -> str:
    return messages[0]["content"] if messages and messages[0]["role"] == "system" else ""


def reply_metrics(reply: str, reference: str, messages: list[dict], judge: RoleJudge | None,
                  earlier: list[str] = ()) -> dict:
    """One reply's measures; `earlier`: the same conversation's earlier replies by the model."""
    facts = persona_facts(system_prompt(messages))
    said = set(sentences(" ".join(earlier)))
    row = {"words": word_count(reply), "length_ratio": length_ratio(reply, reference),
           "repeated_sentences": repeated_sentences(reply),
           "repeated_from_earlier": len(set(sentences(reply)) & said)}
    if judge is not None:
        row["as_bot"] = judge.is_bot(reply)
    if facts:
        row["persona_mentions"] = mentions(reply, facts)
        row["persona_contradictions"] = contradictions(reply, facts)
    return row


def summarise(rows: list[dict], replies: list[str]) -> dict:
    """The table's numbers over many replies' `reply_metrics` rows (absent: nothing to measure)."""
    if not rows:
        return {}
    ratios = [r["length_ratio"] for r in rows]
    out = {"replies": len(rows),
           "repeated_sentence_share": float(np.mean([r["repeated_sentences"] > 0 for r in rows])),
           "repeated_from_earlier_share": float(np.mean([r["repeated_from_earlier"] > 0 for r in rows])),
           "distinct_1": distinct_n(replies, 1), "distinct_2": distinct_n(replies, 2),
           "mean_words": float(np.mean([r["words"] for r in rows])),
           "length_ratio": float(np.mean(ratios)),
           "length_within_half_to_double": float(np.mean([0.5 <= x <= 2 for x in ratios]))}
    judged = [r["as_bot"] for r in rows if "as_bot" in r]
    if judged:
        out["role_consistency"] = float(np.mean(judged))
    grounded = [r for r in rows if "persona_mentions" in r]
    if grounded:
        out["persona_replies"] = len(grounded)
        out["persona_mention_share"] = float(np.mean([bool(r["persona_mentions"]) for r in grounded]))
        out["persona_contradiction_share"] = float(np.mean([bool(r["persona_contradictions"]) for r in grounded]))
    return out


METRIC_NOTES = {
    "role_consistency": "share of replies the role judge reads as the bot's side (" + ROLE_JUDGE_METHOD + ")",
    "repeated_sentence_share": "share of replies that say one sentence twice",
    "repeated_from_earlier_share": "share of replies repeating a sentence of an earlier reply in the conversation",
    "distinct_1": "unique words over all words of the replies", "distinct_2": "unique word pairs over all pairs",
    "mean_words": "mean reply length in words",
    "length_ratio": "mean of reply words / reference reply words",
    "length_within_half_to_double": "share of replies between half and twice their reference's length",
    "persona_mention_share": "share of replies (to prompts with a persona) naming a persona fact: a name, "
                             "number, quarter or month the persona states",
    "persona_contradiction_share": "share of replies contradicting the persona: another own name, head count, "
                                   "budget amount or quarter",
}
