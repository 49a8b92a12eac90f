"""Open a store's database: a URL or a path to an engine, its schema checked (or created, or migrated), and every
way it can fail to open as one `StoreError` line that names the store.

SQLite (the default, one file) runs in WAL mode, so readers never wait for the writer, with a busy timeout so
that writers from several processes queue instead of failing, and every write transaction starts with
BEGIN IMMEDIATE (it takes the write lock at once rather than failing halfway when another writer holds it).
PostgreSQL is reached by URL through psycopg 3.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from core.errors import UserError
from core.store.schema import SCHEMA_VERSION

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 30_000


class StoreError(UserError):
    """The store cannot be opened or used as asked; the message names it and says what to do."""


def store_url(url_or_path: str | Path) -> URL:
    """A SQLAlchemy URL: "sqlite:///x.db", a plain path (SQLite), or a PostgreSQL URL (driver psycopg 3)."""
    text = str(url_or_path)
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser()))
    try:
        url = make_url(text)
    except ArgumentError:
        raise StoreError(f"{shown(text)}: not a store URL; use sqlite:///PATH or "
                         "postgresql+psycopg://USER@HOST:PORT/DATABASE") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername == "sqlite" and url.database and url.database != ":memory:":
        return url
    raise StoreError(f"{shown(text)}: unsupported store {url.drivername!r}; use sqlite:///PATH (one file) or "
                     "postgresql+psycopg://USER@HOST:PORT/DATABASE")


def shown(url: str | URL) -> str:
    """A store URL as messages and files may show it: never its password."""
    try:
        return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url).split("@")[-1] if "@" in str(url) else str(url)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def connect(url: URL, create: bool) -> Engine:
    """An engine for `url`, connected once (so an unreachable server or a corrupt file fails here)."""
    if is_sqlite(url):
        path = Path(url.database)
        if not path.exists():
            if not create:
                raise StoreError(f"{path}: no store there; create it with `train.py team init --store {path}`")
            if not path.parent.is_dir():
                raise StoreError(f"{path}: the directory {path.parent} does not exist")
        elif not path.is_file():
            raise StoreError(f"{path}: not a file, so not an SQLite store")
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _sqlite_setup(engine)
    else:
        try:
            engine = create_engine(url, connect_args={"connect_timeout": 10})
        except NoSuchModuleError:
            raise StoreError(f"{shown(url)}: psycopg 3 is not installed (pip install 'psycopg[binary]')") from None
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except DBAPIError as err:
        engine.dispose()
        raise StoreError(f"{shown(url)}: {reason(err)}") from None
    return engine


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")  # WAL: a commit survives a killed process; fsync at checkpoints
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def reason(err: DBAPIError) -> str:
    """What went wrong, in a phrase, from a driver's error."""
    text = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
    if "file is not a database" in text or "malformed" in text:
        return "not an SQLite database, or a corrupt one (restore it from a backup, or point --store elsewhere)"
    if "Connection refused" in text or "could not connect" in text or "connection failed" in text \
            or "timeout expired" in text or "could not translate host name" in text:
        return f"cannot reach the database server ({text}); check the host, port and that the server runs"
    if "password authentication failed" in text or "authentication" in text:
        return f"the database refused the login ({text}); check the user and its password (PGPASSWORD or ~/.pgpass)"
    if "does not exist" in text:
        return f"{text}; create the database first (createdb) or check its name"
    return text


def current_revision(engine: Engine) -> str | None:
    """The schema version Alembic recorded (None: no store schema yet), read without loading Alembic."""
    with engine.connect() as connection:
        if "alembic_version" not in inspect(connection).get_table_names():
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory
    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def check_schema(engine: Engine, url: URL, create: bool, upgrade: bool) -> None:
    """The database holds this release's schema: create it (an empty database, `create`), migrate an older one
    (`upgrade`), or refuse a newer, an older or a foreign one with the command that fixes it."""
    try:
        revision = current_revision(engine)
        if revision == SCHEMA_VERSION:
            return
        if revision is None:
            tables = inspect(engine).get_table_names()
            if tables:
                raise StoreError(f"{shown(url)}: holds tables ({', '.join(sorted(tables)[:5])}) but no store schema; "
                                 "point --store at a new file or an empty database")
            if not create:
                raise StoreError(f"{shown(url)}: the database is empty; create the store with "
                                 f"`train.py team init --store {shown(url)}`")
            migrate(engine, "head")
            return
        if revision not in known_revisions():
            raise StoreError(f"{shown(url)}: made by a newer roleplay-tuner (schema {revision}; this release knows "
                             f"up to {SCHEMA_VERSION}); upgrade roleplay-tuner to use it")
        if not upgrade:
            raise StoreError(f"{shown(url)}: an older schema ({revision}; this release's is {SCHEMA_VERSION}); back "
                             f"it up, then run `train.py team upgrade --store {shown(url)}`")
        migrate(engine, "head")
    except DBAPIError as err:
        raise StoreError(f"{shown(url)}: {reason(err)}") from None


def migrate(engine: Engine, revision: str) -> None:
    """Run the migrations up to `revision` in one transaction (PostgreSQL and SQLite both roll back DDL)."""
    from alembic import command
    from alembic.config import Config
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
