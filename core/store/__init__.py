"""The team's practice record (users, keys, scenarios, calls, messages, judgements): the only room that knows SQL.

    store = open_store("sqlite:///practice.db")          # or a path, or "postgresql+psycopg://USER@HOST/DB"

See STORE_API.md for the interface other rooms use, and docs/team-store.md for the commands.
"""

from __future__ import annotations

from pathlib import Path

from core.store.database import StoreError, check_schema, connect, store_url
from core.store.store import AccessDenied, CallSummary, Snapshot, Store, User

__all__ = ["AccessDenied", "CallSummary", "Snapshot", "Store", "StoreError", "User", "default_store", "open_store"]
STORE_FILE = "practice.db"


def default_store(model: str) -> Path:
    """Beside the model: `runs/x/best_model` -> `runs/x/practice.db` (the model directory stays a plain one);
    the current directory for a model that is not a local path."""
    path = Path(model).expanduser()
    return (path.parent if path.exists() else Path.cwd()) / STORE_FILE


def open_store(url_or_path: str | Path, create: bool = False, upgrade: bool = False) -> Store:
    """The store at `url_or_path`: created there when `create` (an SQLite file is made on first use), migrated
    from an older schema when `upgrade`; otherwise a StoreError saying what is wrong and what to run."""
    url = store_url(url_or_path)
    engine = connect(url, create)
    try:
        check_schema(engine, url, create, upgrade)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, url)
