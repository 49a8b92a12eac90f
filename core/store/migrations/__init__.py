"""Alembic migrations of the store (env.py, versions/): how a team's database moves to the next schema."""
