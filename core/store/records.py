"""The store's calls and judgements as training records, in the formats other tools read (and core/data reads):

  sft         {"messages": [system, user, assistant, ...]}: each call, a rewrite standing in for the reply it
              rewrote, a reply judged bad (and not rewritten) kept as context with "train": false
  preference  TRL's conversational pairs {"prompt": [...], "chosen": [reply], "rejected": [reply]}: each rewrite
              (the rewrite over the bot's reply) and each pick (the picked reply over the other)
  kto         TRL's labels {"prompt": [...], "completion": [reply], "label": true|false}: each thumbs up or
              down, and each pair as one good and one bad reply (TRL's convention)

Only rows up to a snapshot's ids are read, so the same snapshot gives the same records however many were added
since. A pair or label carries "meta" (which judgement, call, judge and model: not trained; the SFT format has
no room for it). Records come in id order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from sqlalchemy import select

from core.store.schema import calls, judgements, messages, users
from core.store.store import Snapshot, Store, User, check_owner, utc

VIEWS = ("sft", "preference", "kto")


def training_records(store: Store, view: str, snapshot: Snapshot, user: User | None = None,
                     owner: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, record) for each record of `view` in the snapshot: every call's, or those `user` may read (a rep:
    their own), or one `owner`'s."""
    if owner is not None and user is not None:
        check_owner(user, user.id if owner == user.name else None, f"{owner!r}'s calls")
    rows = _read(store, snapshot, user, owner)
    if view == "sft":
        yield from _conversations(store, *rows)
    elif view in ("preference", "kto"):
        yield from _judged(store, view, *rows)
    else:
        raise ValueError(view)


def _read(store: Store, snapshot: Snapshot, user: User | None, owner: str | None):
    call_query = (select(calls.c.id, calls.c.system_prompt, calls.c.model, calls.c.started_at,
                         users.c.name.label("user_name"))
                  .outerjoin(users, users.c.id == calls.c.user_id).where(calls.c.id <= snapshot.calls))
    if user is not None and user.role != "trainer":
        call_query = call_query.where(calls.c.user_id == user.id)
    if owner is not None:
        call_query = call_query.where(users.c.name == owner)
    with store.transaction() as c:
        call_rows = {r.id: r for r in c.execute(call_query.order_by(calls.c.id))}
        by_call = defaultdict(list)
        for m in c.execute(select(messages).where(messages.c.id <= snapshot.messages,
                                                  messages.c.call_id <= snapshot.calls)
                           .order_by(messages.c.call_id, messages.c.position)):
            if m.call_id in call_rows:
                by_call[m.call_id].append(m)
        judged = [j for j in c.execute(select(judgements, users.c.name.label("judge"))
                                       .outerjoin(users, users.c.id == judgements.c.user_id)
                                       .where(judgements.c.id <= snapshot.judgements).order_by(judgements.c.id))
                  if j.call_id in call_rows]
    return call_rows, by_call, judged


def _system(call) -> list[dict]:
    return [{"role": "system", "content": call.system_prompt}] if call.system_prompt.strip() else []


def _conversations(store: Store, call_rows, by_call, judged) -> Iterator[tuple[str, dict]]:
    rewrites, verdicts = {}, {}
    for j in judged:  # in id order: the latest judgement of a reply decides
        if j.kind == "rewrite":
            rewrites[j.message_id] = j.text.strip()
        elif j.kind in ("good", "bad"):
            verdicts[j.message_id] = j.kind
    for call_id, call in call_rows.items():
        turns: list[dict] = []
        for m in by_call.get(call_id, []):
            content = rewrites.get(m.id, m.content)
            train = m.id in rewrites or verdicts.get(m.id) != "bad"
            if turns and turns[-1]["role"] == m.role:  # two turns in a row from one side: one turn, as spoken
                turns[-1]["content"] += "\n\n" + content
                turns[-1]["train"] = turns[-1].get("train", True) and train
                continue
            turns.append({"role": m.role, "content": content, **({} if train or m.role != "assistant"
                                                                    else {"train": False})})
        while turns and turns[-1]["role"] == "user":  # a last line the bot never answered teaches nothing
            turns.pop()
        for turn in turns:
            if turn.get("train", True) is True:
                turn.pop("train", None)
        if not any(t["role"] == "assistant" and t.get("train", True) and t["content"].strip() for t in turns):
            continue
        yield f"{store.where} call {call_id} ({call.user_name or 'no user'}, {call.model})", {
            "messages": _system(call) + turns}


def _judged(store: Store, view: str, call_rows, by_call, judged) -> Iterator[tuple[str, dict]]:
    for j in judged:
        call = call_rows[j.call_id]
        earlier, reply = [], None
        for m in by_call.get(j.call_id, []):
            if m.id == j.message_id:
                reply = m
                break
            earlier.append({"role": m.role, "content": m.content})
        if reply is None:  # the reply is newer than the snapshot's messages
            continue
        prompt = _system(call) + earlier
        meta = {"judgement": j.id, "call": j.call_id, "kind": j.kind, "judge": j.judge, "user": call.user_name,
                "model": reply.model or call.model, "time": utc(j.created_at).isoformat(timespec="seconds")}
        where = f"{store.where} judgement {j.id}"
        if j.kind in ("good", "bad"):
            if view == "kto":
                yield where, {"prompt": prompt, "completion": _said(reply.content), "label": j.kind == "good",
                              "meta": meta}
            continue
        chosen, rejected = (j.text.strip(), reply.content) if j.kind == "rewrite" else (reply.content, j.other_text)
        if j.kind == "pick" and j.other_model:
            meta["other_model"] = j.other_model
        if view == "preference":
            yield where, {"prompt": prompt, "chosen": _said(chosen), "rejected": _said(rejected), "meta": meta}
        else:
            yield where + " (chosen)", {"prompt": prompt, "completion": _said(chosen), "label": True, "meta": meta}
            yield where + " (rejected)", {"prompt": prompt, "completion": _said(rejected), "label": False,
                                          "meta": meta}


def _said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]
