"""What a trainer reviews per scenario: the store's summary (calls, judgements, share judged realistic, the
worst-judged replies with their rewrites) and the roleplay metrics of the bot's replies in those calls
(core/data/roleplay_metrics.py: role kept, persona facts named or contradicted, repetition).

Role kept is read by the metrics' naive-Bayes role judge, learned from the turns of the calls reviewed (the
rep's lines against the bot's); its accuracy on a held-out fifth is shown with it (none under 5 replies).
"""

from __future__ import annotations

from collections import defaultdict

from core.data.roleplay_metrics import reply_metrics, role_judge, summarise
from core.store import Store, User
from core.store.store import scenario_summary

NO_SCENARIO = "(no scenario)"


def replies_by_scenario(store: Store, user: User | None) -> dict[str, list[dict]]:
    """Each bot reply the user may see, as {"messages": context, "reference": reply, "earlier": the call's
    earlier replies}, grouped by the call's scenario."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for call in store.calls_for(user):
        record = store.transcript(user, call.id)
        context = [{"role": "system", "content": record["system"]}] if record["system"] else []
        earlier: list[str] = []
        for message in record["messages"]:
            turn = {"role": message["role"], "content": message["content"]}
            if message["role"] == "assistant":
                grouped[call.scenario or NO_SCENARIO].append(
                    {"messages": list(context), "reference": message["content"], "earlier": list(earlier)})
                earlier.append(message["content"])
            context.append(turn)
    return grouped


def scenario_review(store: Store, user: User | None) -> tuple[list[dict], dict]:
    """Per scenario, worst judged first: the store's summary row with the replies' metrics under "metrics";
    and the role judge's description (its accuracy on held-out turns)."""
    grouped = replies_by_scenario(store, user)
    everything = [r for rows in grouped.values() for r in rows]
    judge = role_judge(everything) if everything else None
    review = scenario_summary(store, user)
    for row in review:
        replies = grouped.get(row["scenario"], [])
        rows = [reply_metrics(r["reference"], r["reference"], r["messages"], judge, r["earlier"]) for r in replies]
        row["metrics"] = summarise(rows, [r["reference"] for r in replies])
    return review, judge.to_dict() if judge else {}


def share(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def review_markdown(row: dict) -> str:
    """One scenario's review as the web app's trainer tab shows it."""
    m = row["metrics"]
    lines = [f"### {row['scenario']}",
             f"**{row['calls']} calls**, {row['replies']} replies; judgements: {row['good']} realistic, "
             f"{row['bad']} not, {row['rewrite']} rewrites, {row['pick']} picks; "
             f"**judged realistic: {share(row['realistic_share'])}** of the thumbs",
             "", "| role kept | names a persona fact | contradicts the persona | repeats itself "
             "| repeats an earlier reply |",
             "| --- | --- | --- | --- | --- |",
             f"| {share(m.get('role_consistency'))} | {share(m.get('persona_mention_share'))} | "
             f"{share(m.get('persona_contradiction_share'))} | {share(m.get('repeated_sentence_share'))} | "
             f"{share(m.get('repeated_from_earlier_share'))} |"]
    if row["worst"]:
        lines += ["", "**Worst-judged replies**", ""]
        lines += [f"- {w['reply']!r}" + (f" -> rewritten: {w['rewrite']!r}" if w["rewrite"] else
                                         " (judged not realistic)") for w in row["worst"]]
    return "\n".join(lines)


def overview_markdown(review: list[dict], judge: dict) -> str:
    if not review:
        return "No calls recorded yet."
    lines = ["| scenario | calls | judgements | judged realistic | role kept | contradicts the persona |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in review:
        judged = row["good"] + row["bad"] + row["rewrite"] + row["pick"]
        lines.append(f"| {row['scenario']} | {row['calls']} | {judged} | {share(row['realistic_share'])} | "
                     f"{share(row['metrics'].get('role_consistency'))} | "
                     f"{share(row['metrics'].get('persona_contradiction_share'))} |")
    accuracy = judge.get("accuracy")
    lines += ["", f"Role kept: the share of replies a role judge reads as the prospect's ({judge.get('method', '')}; "
              f"accuracy {share(accuracy) if accuracy is not None else 'not measured (under 5 replies)'})."]
    return "\n".join(lines)
