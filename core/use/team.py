"""`train.py team ACTION --store URL ...`: the team's practice record (core/store/) from the command line.

  init | upgrade                       create the store / migrate it to this release's schema
  add-user NAME --role rep|trainer     (password from the terminal, or one line on stdin)
  set-role NAME ROLE | set-password NAME | remove-user NAME | users
  add-key NAME [--label L]             print a new API key, once | revoke-key KEY_OR_PREFIX | keys
  import-scenarios FILE                a YAML list of {name, system, difficulty?}
  import-feedback FILE [--user NAME]   a feedback file of the practice apps; lines imported before are skipped
  export --format sft|preference|kto --output FILE [--as NAME] [--user NAME]
  summary [--as NAME]                  per scenario: calls, judgements, share judged realistic, worst replies

Whoever holds the database's URL holds everything in it; `--as NAME` (with NAME's password) reads as that user
would: a rep only their own calls. Passwords are never flags (they would land in the shell's history).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import sys
from datetime import datetime
from pathlib import Path

import yaml

from core.data.files import iter_raw_records
from core.data.preference import LABEL, PAIR, SFT, parse_judged
from core.dataset import DataOptions
from core.errors import ConfigError, first_line
from core.outputs import Input, check_output
from core.store import StoreError, User, open_store
from core.store.records import VIEWS, training_records
from core.store.store import import_judged, scenario_summary
from core.utils import atomic_file

SCENARIO_KEYS = ("name", "system", "difficulty")


def team(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.action in ("init", "upgrade"):
        store = open_store(args.store, create=args.action == "init", upgrade=True)
        print(f"Store ready: {store.where} ({store.counts()['users']} users)")
        return 0
    store = open_store(args.store)
    try:
        return ACTIONS[args.action](store, args)
    finally:
        store.close()


def parser() -> argparse.ArgumentParser:
    from core.config import _Parser
    root = _Parser(prog="train.py team", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = root.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, *arguments: tuple[str, dict]):
        sub = actions.add_parser(name, help=help, description=help)
        sub.add_argument("--store", required=True, help="sqlite:///PATH, a path, or postgresql+psycopg://USER@HOST/DB")
        for flag, options in arguments:
            sub.add_argument(flag, **options)
        return sub
    name, role = ("name", {"help": "the user's name"}), ("--role", {"choices": ("rep", "trainer"), "required": True})
    acting = ("--as", {"dest": "acting", "help": "read as this user (asks for their password)"})
    action("init", "create the store (an SQLite file is created)")
    action("upgrade", "migrate the store to this release's schema (back it up first)")
    action("add-user", "add a user; the password is asked for (or read from stdin); --no-password: keys only",
           name, role, ("--no-password", {"action": "store_true"}))
    action("set-role", "change a user's role", name, ("role", {"choices": ("rep", "trainer")}))
    action("set-password", "set a user's password (asked for, or read from stdin)", name)
    action("remove-user", "remove a user's password and keys (their calls and judgements stay)", name)
    action("users", "list the users")
    action("add-key", "create an API key for a user; it is shown once", name, ("--label", {"default": ""}))
    action("revoke-key", "revoke an API key (the key, or the prefix `keys` shows)", ("key", {}))
    action("keys", "list the API keys (prefixes only)")
    action("import-scenarios", "add or update scenarios from a YAML list of {name, system, difficulty}",
           ("file", {}))
    action("import-feedback", "import a practice app's feedback file (lines imported before are skipped)",
           ("file", {}), ("--user", {"help": "the user who made these judgements"}))
    action("export", "write calls (sft), pairs (preference, TRL) or labels (kto, TRL) as JSON lines",
           ("--format", {"choices": VIEWS, "required": True}), ("--output", {"required": True}), acting,
           ("--user", {"help": "only this user's calls"}))
    action("summary", "per scenario: calls, judgements, share judged realistic, the worst-judged replies", acting)
    return root


def read_password(prompt: str, confirm: bool = False) -> str:
    """From the terminal (asked twice when new), or the first line of stdin (scripts, CI); never a flag."""
    if sys.stdin is not None and sys.stdin.isatty():
        password = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ; nothing was changed")
        return password
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line.strip():
        raise ConfigError(f"{prompt}: none given; type it at the terminal, or pass it as one line on stdin")
    return line.rstrip("\r\n")


def acting_user(store, name: str | None) -> User | None:
    if name is None:
        return None
    user = store.check_password(name, read_password(f"Password for {name}"))
    if user is None:
        raise StoreError(f"{store.where}: wrong user name or password for {name!r}")
    return user


def add_user(store, args) -> int:
    password = None if args.no_password else read_password(f"New password for {args.name}", confirm=True)
    user = store.add_user(args.name, args.role, password)
    print(f"Added {user.role} {user.name!r}" + (" (no password: give them a key with add-key)"
                                               if password is None else ""))
    return 0


def set_role(store, args) -> int:
    print(f"{args.name!r} is now a {store.set_role(args.name, args.role).role}")
    return 0


def set_password(store, args) -> int:
    store.user(args.name)  # an unknown name is refused before asking
    store.set_password(args.name, read_password(f"New password for {args.name}", confirm=True))
    print(f"Password of {args.name!r} changed")
    return 0


def remove_user(store, args) -> int:
    revoked = store.remove_user(args.name)
    print(f"Removed {args.name!r} ({revoked} keys revoked; their calls and judgements stay)")
    return 0


def list_users(store, args) -> int:
    for user in store.users():
        state = "removed" if user["removed"] else ("password" if user["password"] else "keys only")
        print(f"{user['name']}\t{user['role']}\t{state}")
    return 0


def add_key(store, args) -> int:
    key = store.add_key(args.name, args.label)
    print(f"API key for {args.name!r} (shown once; store it now, revoke it with `team revoke-key {key[:12]}`):")
    print(key)
    return 0


def revoke_key(store, args) -> int:
    print(f"Revoked the key of {store.revoke_key(args.key)!r}")
    return 0


def list_keys(store, args) -> int:
    for key in store.keys():
        print(f"{key['prefix']}...\t{key['user']}\t{key['label'] or ''}\t{'revoked' if key['revoked'] else 'active'}")
    return 0


def import_scenarios(store, args) -> int:
    entries = read_scenarios(Path(args.file))
    counts = store.put_scenarios(entries, source=str(Path(args.file).resolve()))
    print(f"Scenarios from {args.file}: {counts['added']} added, {counts['updated']} updated, "
          f"{counts['unchanged']} unchanged")
    return 0


def read_scenarios(path: Path) -> list[dict]:
    """Every entry checked before anything is written: a list of {name, system, difficulty?}, no other key."""
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the file ({getattr(err, 'strerror', None) or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({first_line(err)})") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected a list of {{name, system, difficulty}} entries")
    out, names = [], set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path} entry {index}: expected {{name, system, difficulty}}, got "
                              f"{type(entry).__name__}")
        unknown = [key for key in entry if key not in SCENARIO_KEYS]
        if unknown:
            raise ConfigError(f"{path} entry {index}: unknown key {unknown[0]!r} (known keys: "
                              f"{', '.join(SCENARIO_KEYS)}); nothing was imported")
        if not (isinstance(entry.get("name"), str) and entry["name"].strip() and isinstance(entry.get("system"), str)
                and entry["system"].strip()):
            raise ConfigError(f"{path} entry {index}: needs a 'name' and a 'system' text")
        difficulty = entry.get("difficulty")
        if difficulty is not None and not isinstance(difficulty, str | int):
            raise ConfigError(f"{path} entry {index}: 'difficulty' must be a word or a number")
        if entry["name"] in names:
            raise ConfigError(f"{path} entry {index}: the name {entry['name']!r} appears twice")
        names.add(entry["name"])
        out.append({"name": entry["name"].strip(), "persona": entry["system"].strip(),
                    "difficulty": None if difficulty is None else str(difficulty)})
    return out


def import_feedback(store, args) -> int:
    user = store.user(args.user) if args.user else None
    items, sft = feedback_items(args.file)
    added, skipped = import_judged(store, items, user)
    print(f"Imported {added} judgements from {args.file} ({skipped} imported before, skipped"
          + (f"; {sft} SFT records, which the rewrites they come from already hold, skipped" if sft else "") + ")")
    return 0


def feedback_items(path: str) -> tuple[list[dict], int]:
    """Each judgement of a feedback file (core/use/feedback.py's formats), validated as training validates it."""
    items, sft = [], 0
    for where, raw in iter_raw_records(path):
        judged = parse_judged(where, raw, DataOptions())
        if judged.kind == SFT:
            sft += 1
            continue
        if "messages" not in raw or judged.kind not in (PAIR, LABEL) or not isinstance(raw.get(
                "chosen", raw.get("completion")), str):
            raise ConfigError(f"{where}: not a feedback line of the practice apps ({{'messages', 'completion', "
                              "'label'}} or {'messages', 'chosen', 'rejected'}); train.py accepts other formats "
                              "directly")
        meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
        context = raw["messages"]
        system = context[0]["content"] if context and context[0]["role"] == "system" else ""
        turns = context[1:] if system else context
        item = {"key": hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest(),
                "system": system, "turns": [{"role": t["role"], "content": t["content"]} for t in turns],
                "model": str(meta.get("model") or "unknown"), "time": parse_time(meta.get("time"))}
        if judged.kind == LABEL:
            item.update(kind="good" if raw["label"] else "bad", reply=raw["completion"])
        elif meta.get("other_model"):
            item.update(kind="pick", reply=raw["chosen"], other_text=raw["rejected"],
                        other_model=str(meta["other_model"]))
        else:
            item.update(kind="rewrite", reply=raw["rejected"], text=raw["chosen"])
        items.append(item)
    return items, sft


def parse_time(value) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def export(store, args) -> int:
    user = acting_user(store, args.acting)
    output = Path(args.output)
    check_output("--output", output, store_inputs(store), lambda _: False, "written by this export")
    records = [record for _, record in training_records(store, args.format, store.snapshot(), user, args.user)]
    with atomic_file(output) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    print(f"Wrote {len(records)} {args.format} records to {output}")
    return 0


def store_inputs(store) -> list[Input]:
    return [Input("--store", Path(store.url.database))] if store.url.get_backend_name() == "sqlite" else []


def summary(store, args) -> int:
    user = acting_user(store, args.acting)
    rows = scenario_summary(store, user)
    if not rows:
        print("No calls yet.")
    for row in rows:
        share = "no thumbs yet" if row["realistic_share"] is None else f"{row['realistic_share']:.0%} judged realistic"
        print(f"{row['scenario']}: {row['calls']} calls, {row['replies']} replies; {share} (good {row['good']}, "
              f"bad {row['bad']}, rewrites {row['rewrite']}, picks {row['pick']})")
        for worst in row["worst"]:
            print(f"  judged bad: {worst['reply']!r}" + (f" -> {worst['rewrite']!r}" if worst["rewrite"] else ""))
    return 0


ACTIONS = {"add-user": add_user, "set-role": set_role, "set-password": set_password, "remove-user": remove_user,
           "users": list_users, "add-key": add_key, "revoke-key": revoke_key, "keys": list_keys,
           "import-scenarios": import_scenarios, "import-feedback": import_feedback, "export": export,
           "summary": summary}
