"""The store's tables, as the newest migration leaves them (core/store/migrations/ builds them step by step).

Every row has an integer id that only grows, so "every row up to id N" is a snapshot a training run can read
again later (core/data/store_reader.py). Times are UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = "0002"  # the newest migration's revision (core/store/migrations/versions/); a test checks it
ROLES = ("rep", "trainer")
KINDS = ("good", "bad", "rewrite", "pick")

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("password_hash", Text),            # argon2id; None: no password (keys only), or removed
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("removed_at", DateTime(timezone=True)),
    Column("failed_logins", Integer, nullable=False, server_default="0"),
    Column("locked_until", DateTime(timezone=True)),
    Column("last_login_at", DateTime(timezone=True)),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("prefix", String(16), nullable=False),            # the key's first characters, to tell keys apart
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 of the whole key
    Column("label", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

scenarios = Table(
    "scenarios", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(500), nullable=False, unique=True),
    Column("persona", Text, nullable=False),  # the system prompt the bot plays
    Column("difficulty", String(50)),
    Column("source", Text),                   # where it came from: a file, or "practice"
    Column("created_at", DateTime(timezone=True), nullable=False),
)

calls = Table(
    "calls", metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("users.id")),
    Column("scenario_id", ForeignKey("scenarios.id")),
    Column("system_prompt", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)

messages = Table(
    "messages", metadata,
    Column("id", Integer, primary_key=True),
    Column("call_id", ForeignKey("calls.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("role", String(20), nullable=False),
    Column("content", Text, nullable=False),
    Column("model", Text),
    Column("sampling", JSON),
    Column("latency_ms", Float),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("call_id", "position", name="uq_messages_call_position"),
)

judgements = Table(
    "judgements", metadata,
    Column("id", Integer, primary_key=True),
    Column("call_id", ForeignKey("calls.id"), nullable=False, index=True),
    Column("message_id", ForeignKey("messages.id"), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("user_id", ForeignKey("users.id")),
    Column("text", Text),          # rewrite: the better reply
    Column("other_text", Text),    # pick: the reply not picked
    Column("other_model", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("import_key", String(64)),  # sha256 of an imported feedback line (imports skip duplicates)
    Index("ix_judgements_import_key", "import_key", unique=True),
)
