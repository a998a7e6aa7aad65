"""Alembic migrations of the whole schema; they import every package's tables, so they live at the top."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


# the key of the PostgreSQL advisory lock migrations hold: processes started at once (API processes, workers)
# migrate one after the other, and the later ones find the schema at head
MIGRATION_LOCK_KEY = 0x61746E6D  # "atnm"


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest Alembic revision (on PostgreSQL under an advisory lock held until
    the migration's transaction ends, so processes starting together do not migrate at once)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
