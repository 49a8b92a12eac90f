"""The team's practice record: who may practise, the scenarios, every call with its messages and judgements.

Every write is one transaction, committed before the method returns: a judgement the caller was told about
survives the process being killed. A rep may read and judge only their own calls; a trainer reads everyone's;
the holder of the database itself (the `team` command, `user=None`) reads everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError

from core.store import credentials
from core.store.database import StoreError, reason, shown
from core.store.schema import KINDS, ROLES, api_keys, calls, judgements, messages, scenarios, users

MAX_FAILURES = 5                   # failed logins in a row before a name is locked ...
LOCKOUT = timedelta(seconds=60)    # ... for this long


class AccessDenied(StoreError):
    """A user asked for what their role does not allow."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str  # "rep" | "trainer"


@dataclass(frozen=True)
class CallSummary:
    id: int
    user: str | None
    scenario: str | None
    model: str
    started_at: datetime
    ended_at: datetime | None
    messages: int
    judgements: int


@dataclass(frozen=True)
class Snapshot:
    """Every row up to these ids: what a training run reads, and reads again when it resumes."""
    calls: int
    messages: int
    judgements: int

    def __str__(self) -> str:
        return f"{self.calls},{self.messages},{self.judgements}"


def now() -> datetime:
    return datetime.now(timezone.utc)


def utc(moment: datetime | None) -> datetime | None:
    """A time read back (SQLite returns it without its zone; it was written in UTC)."""
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


class Store:
    def __init__(self, engine: Engine, url: URL):
        self.engine, self.url = engine, url

    def __repr__(self) -> str:
        return f"Store({shown(self.url)})"

    @property
    def where(self) -> str:
        return shown(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def transaction(self):
        """One transaction, committed on leaving; a database fault is a StoreError naming the store."""
        return _Transaction(self)

    # Users and keys ------------------------------------------------------------------------------

    def has_users(self) -> bool:
        with self.transaction() as c:
            return c.execute(select(users.c.id).where(users.c.removed_at.is_(None)).limit(1)).first() is not None

    def add_user(self, name: str, role: str, password: str | None) -> User:
        check_name(name)
        check_role(role)
        hashed = credentials.hash_password(check_password_strength(password)) if password is not None else None
        with self.transaction() as c:
            if c.execute(select(users.c.id).where(users.c.name == name)).first():
                raise StoreError(f"{self.where}: a user named {name!r} exists already (set-role changes a role)")
            user_id = c.execute(insert(users).values(name=name, role=role, password_hash=hashed, created_at=now())
                                ).inserted_primary_key[0]
        return User(user_id, name, role)

    def user(self, name: str) -> User:
        with self.transaction() as c:
            row = c.execute(select(users).where(users.c.name == name, users.c.removed_at.is_(None))).first()
        if row is None:
            raise StoreError(f"{self.where}: no user named {name!r} (`train.py team users` lists them)")
        return User(row.id, row.name, row.role)

    def users(self) -> list[dict]:
        with self.transaction() as c:
            rows = c.execute(select(users).order_by(users.c.id)).all()
        return [{"name": r.name, "role": r.role, "removed": r.removed_at is not None,
                 "password": r.password_hash is not None} for r in rows]

    def set_role(self, name: str, role: str) -> User:
        check_role(role)
        user = self.user(name)
        with self.transaction() as c:
            c.execute(update(users).where(users.c.id == user.id).values(role=role))
        return User(user.id, user.name, role)

    def set_password(self, name: str, password: str) -> None:
        hashed = credentials.hash_password(check_password_strength(password))
        user = self.user(name)
        with self.transaction() as c:
            c.execute(update(users).where(users.c.id == user.id).values(password_hash=hashed, failed_logins=0,
                                                                         locked_until=None))

    def remove_user(self, name: str) -> int:
        """The user can no longer log in (password and keys gone); their calls and judgements stay, so that
        training on them is unchanged. Returns how many keys were revoked."""
        user = self.user(name)
        with self.transaction() as c:
            c.execute(update(users).where(users.c.id == user.id).values(removed_at=now(), password_hash=None))
            return c.execute(update(api_keys).where(api_keys.c.user_id == user.id, api_keys.c.revoked_at.is_(None))
                             .values(revoked_at=now())).rowcount

    def check_password(self, name: str, password: str) -> User | None:
        """The user, or None for a wrong name or password. After MAX_FAILURES failures in a row the name is
        locked for LOCKOUT, even to the right password: StoreError saying for how long."""
        with self.transaction() as c:
            row = c.execute(select(users).where(users.c.name == name, users.c.removed_at.is_(None))).first()
        if row is not None and row.locked_until is not None and utc(row.locked_until) > now():
            wait = int((utc(row.locked_until) - now()).total_seconds()) + 1
            raise StoreError(f"too many failed logins for {name!r}; try again in {wait} s")
        if not credentials.password_matches(row.password_hash if row else None, password):
            if row is not None:
                with self.transaction() as c:
                    failures = c.execute(update(users).where(users.c.id == row.id)
                                         .values(failed_logins=users.c.failed_logins + 1)
                                         .returning(users.c.failed_logins)).scalar_one()
                    if failures >= MAX_FAILURES:
                        c.execute(update(users).where(users.c.id == row.id)
                                  .values(locked_until=now() + LOCKOUT, failed_logins=0))
            return None
        with self.transaction() as c:
            c.execute(update(users).where(users.c.id == row.id).values(failed_logins=0, locked_until=None,
                                                                       last_login_at=now()))
        return User(row.id, row.name, row.role)

    def add_key(self, name: str, label: str = "") -> str:
        """A new API key for the user: returned once, stored only as its hash."""
        user = self.user(name)
        key = credentials.new_key()
        with self.transaction() as c:
            c.execute(insert(api_keys).values(user_id=user.id, prefix=credentials.key_prefix(key),
                                              key_hash=credentials.key_hash(key), label=label or None,
                                              created_at=now()))
        return key

    def revoke_key(self, key_or_prefix: str) -> str:
        """Revoke a key given whole or by the prefix `keys` shows; returns its owner's name."""
        match = (api_keys.c.key_hash == credentials.key_hash(key_or_prefix)) | (api_keys.c.prefix == key_or_prefix)
        with self.transaction() as c:
            rows = c.execute(select(api_keys.c.id, users.c.name).join(users).where(match)).all()
            if len(rows) != 1:
                raise StoreError(f"{self.where}: {'no' if not rows else 'more than one'} key matches "
                                 f"{credentials.key_prefix(key_or_prefix)!r} (`train.py team keys` lists them)")
            c.execute(update(api_keys).where(api_keys.c.id == rows[0].id).values(revoked_at=now()))
        return rows[0].name

    def keys(self) -> list[dict]:
        with self.transaction() as c:
            rows = c.execute(select(api_keys, users.c.name).join(users).order_by(api_keys.c.id)).all()
        return [{"prefix": r.prefix, "user": r.name, "label": r.label, "created_at": utc(r.created_at),
                 "revoked": r.revoked_at is not None} for r in rows]

    def user_for_key(self, key: str) -> User | None:
        with self.transaction() as c:
            row = c.execute(select(users).join(api_keys).where(
                api_keys.c.key_hash == credentials.key_hash(key), api_keys.c.revoked_at.is_(None),
                users.c.removed_at.is_(None))).first()
        return User(row.id, row.name, row.role) if row else None

    # Scenarios -----------------------------------------------------------------------------------

    def put_scenarios(self, entries: list[dict], source: str) -> dict:
        """Add or update scenarios ({name, persona, difficulty}) in one transaction; counts of each outcome."""
        counts = {"added": 0, "updated": 0, "unchanged": 0}
        with self.transaction() as c:
            for entry in entries:
                row = c.execute(select(scenarios).where(scenarios.c.name == entry["name"])).first()
                values = {"persona": entry["persona"], "difficulty": entry.get("difficulty"), "source": source}
                if row is None:
                    c.execute(insert(scenarios).values(name=entry["name"], created_at=now(), **values))
                    counts["added"] += 1
                elif (row.persona, row.difficulty) != (values["persona"], values["difficulty"]):
                    c.execute(update(scenarios).where(scenarios.c.id == row.id).values(**values))
                    counts["updated"] += 1
                else:
                    counts["unchanged"] += 1
        return counts

    def scenarios(self) -> list[dict]:
        with self.transaction() as c:
            rows = c.execute(select(scenarios).order_by(scenarios.c.id)).all()
        return [{"name": r.name, "persona": r.persona, "difficulty": r.difficulty, "source": r.source} for r in rows]

    # Recording a practice call -------------------------------------------------------------------

    def open_call(self, user: User | None, scenario: str | None, system_prompt: str, model: str,
                  fingerprint: str) -> int:
        with self.transaction() as c:
            scenario_id = scenario_row(c, scenario, system_prompt) if scenario else None
            return c.execute(insert(calls).values(user_id=user.id if user else None, scenario_id=scenario_id,
                                                  system_prompt=system_prompt, model=str(model),
                                                  fingerprint=fingerprint, started_at=now())).inserted_primary_key[0]

    def add_message(self, call_id: int, position: int, role: str, content: str, model: str | None = None,
                    sampling: dict | None = None, latency_ms: float | None = None) -> int:
        if role not in ("user", "assistant"):
            raise StoreError(f"message role {role!r}: a call holds 'user' and 'assistant' messages (the persona is "
                             "the call's system prompt)")
        with self.transaction() as c:
            call_row(c, call_id)
            try:
                return c.execute(insert(messages).values(
                    call_id=call_id, position=position, role=role, content=content, model=model, sampling=sampling,
                    latency_ms=latency_ms, created_at=now())).inserted_primary_key[0]
            except IntegrityError:
                raise StoreError(f"call {call_id} has a message at position {position} already") from None

    def add_judgement(self, call_id: int, message_id: int, kind: str, user: User | None, text: str | None = None,
                      other_text: str | None = None, other_model: str | None = None) -> int:
        """Record a judgement of one of the bot's replies: good, bad, rewrite (`text`: the better reply) or pick
        (the reply was picked over `other_text`, by `other_model`). A rep judges only their own calls."""
        with self.transaction() as c:
            message = c.execute(select(messages.c.role, messages.c.content, calls.c.user_id).join(calls).where(
                messages.c.id == message_id, messages.c.call_id == call_id)).first()
            if message is None or message.role != "assistant":
                raise StoreError(f"message {message_id} is not one of the bot's replies in call {call_id}")
            check_owner(user, message.user_id, f"call {call_id}")
            check_judgement(kind, message.content, text, other_text)
            return c.execute(insert(judgements).values(
                call_id=call_id, message_id=message_id, kind=kind, user_id=user.id if user else None, text=text,
                other_text=other_text, other_model=other_model, created_at=now())).inserted_primary_key[0]

    def close_call(self, call_id: int) -> None:
        with self.transaction() as c:
            call_row(c, call_id)
            c.execute(update(calls).where(calls.c.id == call_id, calls.c.ended_at.is_(None)).values(ended_at=now()))

    # Reading -------------------------------------------------------------------------------------

    def calls_for(self, user: User | None, owner: str | None = None) -> list[CallSummary]:
        """Calls a user may see: a rep their own, a trainer (or the database's holder, None) everyone's;
        `owner` narrows to one user's calls, which a rep may ask only of themselves."""
        if owner is not None and user is not None and user.role != "trainer" and owner != user.name:
            raise AccessDenied(f"{user.name!r} is a rep and may read only their own calls, not {owner!r}'s")
        n_messages = select(func.count()).where(messages.c.call_id == calls.c.id).scalar_subquery()
        n_judgements = select(func.count()).where(judgements.c.call_id == calls.c.id).scalar_subquery()
        query = (select(calls, users.c.name.label("user_name"), scenarios.c.name.label("scenario_name"),
                        n_messages.label("n_messages"), n_judgements.label("n_judgements"))
                 .outerjoin(users, users.c.id == calls.c.user_id)
                 .outerjoin(scenarios, scenarios.c.id == calls.c.scenario_id).order_by(calls.c.id))
        if user is not None and user.role != "trainer":
            query = query.where(calls.c.user_id == user.id)
        if owner is not None:
            query = query.where(users.c.name == owner)
        with self.transaction() as c:
            rows = c.execute(query).all()
        return [CallSummary(r.id, r.user_name, r.scenario_name, r.model, utc(r.started_at), utc(r.ended_at),
                            r.n_messages, r.n_judgements) for r in rows]

    def transcript(self, user: User | None, call_id: int) -> dict:
        """One call as a user may download it (a rep: only their own): its persona, messages and judgements."""
        with self.transaction() as c:
            call = call_row(c, call_id)
            check_owner(user, call.user_id, f"call {call_id}")
            turns = c.execute(select(messages).where(messages.c.call_id == call_id).order_by(messages.c.position))
            judged = c.execute(select(judgements).where(judgements.c.call_id == call_id).order_by(judgements.c.id))
            return {"call": call_id, "model": call.model, "system": call.system_prompt,
                    "messages": [{"id": m.id, "role": m.role, "content": m.content} for m in turns],
                    "judgements": [{"message": j.message_id, "kind": j.kind, "text": j.text,
                                    "other_text": j.other_text} for j in judged]}

    def snapshot(self) -> Snapshot:
        """The highest ids now: the rows a training run starting now reads."""
        with self.transaction() as c:
            return Snapshot(*(c.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one()
                              for t in (calls, messages, judgements)))

    def counts(self) -> dict:
        """Rows in each table, and judgements by kind."""
        with self.transaction() as c:
            counts = {t.name: c.execute(select(func.count()).select_from(t)).scalar_one()
                      for t in (users, api_keys, scenarios, calls, messages, judgements)}
            by_kind = dict(c.execute(select(judgements.c.kind, func.count()).group_by(judgements.c.kind)).all())
        return {**counts, "by_kind": {kind: by_kind.get(kind, 0) for kind in KINDS}}


class _Transaction:
    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        self.context = self.store.engine.begin()
        try:
            return self.context.__enter__()
        except DBAPIError as err:
            raise StoreError(f"{self.store.where}: {reason(err)}") from None

    def __exit__(self, kind, value, traceback):
        try:
            self.context.__exit__(kind, value, traceback)
        except DBAPIError as err:
            raise StoreError(f"{self.store.where}: {reason(err)}") from None
        if isinstance(value, DBAPIError) and not isinstance(value, IntegrityError):
            raise StoreError(f"{self.store.where}: {reason(value)}") from None
        return False


def scenario_row(c, name: str, persona: str) -> int:
    """The id of the scenario `name`, recorded with this persona on first use if no import brought it."""
    found = c.execute(select(scenarios.c.id).where(scenarios.c.name == name)).scalar()
    if found is not None:
        return found
    return c.execute(insert(scenarios).values(name=name, persona=persona, source="practice", created_at=now())
                     ).inserted_primary_key[0]


def call_row(c, call_id: int):
    row = c.execute(select(calls).where(calls.c.id == call_id)).first()
    if row is None:
        raise StoreError(f"no call {call_id} in the store")
    return row


def check_owner(user: User | None, owner_id: int | None, what: str) -> None:
    if user is not None and user.role != "trainer" and owner_id != user.id:
        raise AccessDenied(f"{user.name!r} is a rep and may use only their own calls, not {what}")


def check_judgement(kind: str, reply: str, text: str | None, other_text: str | None) -> None:
    """Refuse a judgement that training would refuse later (core/data/preference.py), now, when it is made."""
    if kind not in KINDS:
        raise StoreError(f"judgement kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "rewrite" and (not (text or "").strip() or text.strip() == reply.strip()):
        raise StoreError("a rewrite needs the better reply, different from the bot's")
    if kind == "pick" and (not (other_text or "").strip() or other_text.strip() == reply.strip()):
        raise StoreError("a pick needs the other reply, different from the picked one")
    if kind in ("good", "bad") and (text or other_text):
        raise StoreError(f"a {kind!r} judgement carries no text")


def check_name(name: str) -> None:
    if not name or name != name.strip() or len(name) > 200 or any(ch in name for ch in "\n\r\t\0"):
        raise StoreError(f"user name {name!r}: 1 to 200 characters, no spaces at its ends, no control characters")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise StoreError(f"role {role!r}: use one of {', '.join(ROLES)}")


def check_password_strength(password: str) -> str:
    if len(password) < credentials.MIN_PASSWORD:
        raise StoreError(f"the password is too short: at least {credentials.MIN_PASSWORD} characters")
    return password


def import_judged(store: Store, items: list[dict], user: User | None) -> tuple[int, int]:
    """Record judgements made before the store existed (feedback files), each as a call of its own, in one
    transaction; an item whose `key` was imported before is skipped. Returns (added, skipped)."""
    added = skipped = 0
    with store.transaction() as c:
        for item in items:
            if c.execute(select(judgements.c.id).where(judgements.c.import_key == item["key"])).first():
                skipped += 1
                continue
            when = item.get("time") or now()
            call_id = c.execute(insert(calls).values(
                user_id=user.id if user else None, system_prompt=item["system"], model=item["model"],
                fingerprint="imported", started_at=when, ended_at=when)).inserted_primary_key[0]
            for position, turn in enumerate(item["turns"]):
                c.execute(insert(messages).values(call_id=call_id, position=position, role=turn["role"],
                                                  content=turn["content"], created_at=when))
            reply = c.execute(insert(messages).values(
                call_id=call_id, position=len(item["turns"]), role="assistant", content=item["reply"],
                model=item["model"], created_at=when)).inserted_primary_key[0]
            check_judgement(item["kind"], item["reply"], item.get("text"), item.get("other_text"))
            c.execute(insert(judgements).values(
                call_id=call_id, message_id=reply, kind=item["kind"], user_id=user.id if user else None,
                text=item.get("text"), other_text=item.get("other_text"), other_model=item.get("other_model"),
                created_at=when, import_key=item["key"]))
            added += 1
    return added, skipped


def scenario_summary(store: Store, user: User | None, worst: int = 3) -> list[dict]:
    """Per scenario (a trainer: everyone's calls; a rep: their own): calls, replies, judgements by kind, the share
    of thumbs that were up, and the replies judged worst (thumbs down or rewritten) with their rewrites."""
    query = (select(calls.c.id, scenarios.c.name).outerjoin(scenarios, scenarios.c.id == calls.c.scenario_id))
    if user is not None and user.role != "trainer":
        query = query.where(calls.c.user_id == user.id)
    with store.transaction() as c:
        scenario_of = {r.id: r.name or "(no scenario)" for r in c.execute(query)}
        replies = c.execute(select(messages.c.call_id, func.count()).where(messages.c.role == "assistant")
                            .group_by(messages.c.call_id)).all()
        judged = c.execute(select(judgements.c.call_id, judgements.c.kind, judgements.c.text, messages.c.content)
                           .join(messages, messages.c.id == judgements.c.message_id)
                           .order_by(judgements.c.id)).all()
    table: dict[str, dict] = {}

    def entry(name: str) -> dict:
        return table.setdefault(name, {"scenario": name, "calls": 0, "replies": 0, **{k: 0 for k in KINDS},
                                       "worst": []})
    for name in scenario_of.values():
        entry(name)["calls"] += 1
    for call_id, n in replies:
        if call_id in scenario_of:
            entry(scenario_of[call_id])["replies"] += n
    for j in judged:
        if j.call_id in scenario_of:
            row = entry(scenario_of[j.call_id])
            row[j.kind] += 1
            if j.kind in ("bad", "rewrite") and len(row["worst"]) < worst:
                row["worst"].append({"reply": j.content, "rewrite": j.text})
    for row in table.values():
        thumbs = row["good"] + row["bad"]
        row["realistic_share"] = row["good"] / thumbs if thumbs else None
    return sorted(table.values(), key=lambda r: (r["realistic_share"] is None, r["realistic_share"] or 0))
