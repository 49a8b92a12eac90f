"""Failed-login throttling on users, and the key that lets a feedback file be imported twice without duplicates.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.add_column(sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"))
        users.add_column(sa.Column("locked_until", sa.DateTime(timezone=True)))
        users.add_column(sa.Column("last_login_at", sa.DateTime(timezone=True)))
    with op.batch_alter_table("judgements") as judgements:
        judgements.add_column(sa.Column("import_key", sa.String(64)))
        judgements.create_index("ix_judgements_import_key", ["import_key"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("judgements") as judgements:
        judgements.drop_index("ix_judgements_import_key")
        judgements.drop_column("import_key")
    with op.batch_alter_table("users") as users:
        for column in ("last_login_at", "locked_until", "failed_logins"):
            users.drop_column(column)
