"""Roleplay metrics on constructed replies whose answers are known, and the role judge on the repository's data."""


import pytest
from conftest import repository_records

from core.data.roleplay_metrics import (
    RoleJudge,
    contradictions,
    distinct_n,
    length_ratio,
    mentions,
    persona_facts,
    repeated_across,
    repeated_sentences,
    reply_metrics,
    role_judge,
    summarise,
)

PERSONA = ("You are Frank Marquez, operations director at Oakline Foundation, a 22-person nonprofit in central "
           "Pennsylvania. Your budget is capped at $5,000 a year and frozen until Q4. A sales rep named Nate from "
           "Tidewater is calling you about payroll software. Stay in character as the prospect.")


def test_repeated_sentences_within_and_across_replies_and_distinct_n():
    assert repeated_sentences("I'm not sure. We use a bookkeeper. I'm not sure!") == 1
    assert repeated_sentences("No. Not now. Maybe in Q4.") == 0
    assert repeated_across(["We're fine. Send me something.", "Send me something. Bye.", "Bye."]) == [0, 1, 1]
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b", "c d"], 2) == 1.0


def test_length_ratio_against_the_reference():
    assert length_ratio("one two three four", "one two") == 2.0
    rows = [reply_metrics(r, "a b c d", [], None) for r in ("a b c d", "a", "a b c d e f g h i j")]
    assert summarise(rows, ["x"] * 3)["length_within_half_to_double"] == pytest.approx(1 / 3)


# Labelled replies for the persona rules: (reply, mentions a fact, contradicts the persona)
LABELLED = [
    ("We're a 22-person shop; nothing moves before Q4.", True, False),
    ("Our budget is $20,000 this year, so maybe.", False, True),        # the persona's budget is $5,000
    ("We can't spend more than $5,000 on this.", True, False),        # the persona's own budget
    ("I'm Sarah, and I handle payroll here.", False, True),             # the persona is Frank
    ("Frank here. What is this about?", True, False),
    ("We have 40 employees, so that won't scale.", False, True),        # 22 people
    ("Sounds interesting, tell me more.", False, False),                 # ignores the persona
    ("Oakline has used a bookkeeper for years.", True, False),
    ("Maybe in Q2 we could talk.", False, True),                          # frozen until Q4
    ("Nate, I told you, send an email.", False, False),                  # the rep's name is no persona fact
]


@pytest.mark.parametrize("reply,mentioned,contradicted", LABELLED)
def test_persona_grounding_agrees_with_labelled_replies(reply, mentioned, contradicted):
    facts = persona_facts(PERSONA)
    assert bool(mentions(reply, facts)) == mentioned
    assert bool(contradictions(reply, facts)) == contradicted


def test_a_reply_contradicting_the_persona_budget_is_reported_with_the_amounts():
    found = contradictions("Honestly our budget for this is $12k.", persona_facts(PERSONA))
    assert found == ["budget 12000 (the persona's: 5000)"]


def test_the_role_judge_separates_held_out_rep_and_prospect_turns_of_the_repository_data():
    judge = role_judge(repository_records(), seed=0)
    print(f"role judge held-out accuracy {judge.accuracy:.3f} on {judge.held_out_turns} turns")
    assert judge.accuracy > 0.9 and judge.held_out_turns > 200
    # a reply written as the rep reads as the user's side; a prospect's objection as the bot's
    assert not judge.is_bot("Hi Frank, this is Nate from Tidewater. Do you have two minutes to talk about how we "
                            "could save your team time on payroll?")
    assert judge.is_bot("Honestly, we're fine with our bookkeeper, and the budget is frozen until Q4.")


def test_a_judge_trained_on_one_side_only_is_not_scored():
    judge = RoleJudge.fit(["no thanks"], ["hello"])
    assert judge.accuracy is None and judge.is_bot("no thanks") and not judge.is_bot("hello")
