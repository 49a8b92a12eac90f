"""Alembic's entry point: migrate the connection core/store/migrate.py hands over (no alembic.ini, no logging setup)."""

from alembic import context

from core.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
