"""Revision 0023 (website sources) on real SQLite and PostgreSQL: up, matching the models, down, up again."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from atende.migrate import MIGRATIONS_DIR, migrate
from core.db import Base, make_engine

TABLES = {"website_sources", "website_pages", "website_sync_runs"}


def test_website_tables_go_up_and_down_and_match_the_models(database_url):
    engine = make_engine(database_url)
    migrate(engine)
    assert set(sa.inspect(engine).get_table_names()) >= TABLES
    assert "ix_website_sources_next_sync_at" in {i["name"] for i in sa.inspect(engine).get_indexes("website_sources")}
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if any(t in str(d) for t in TABLES)] == []
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0024_accounts")
    assert not TABLES & set(sa.inspect(engine).get_table_names())
    migrate(engine)
    assert set(sa.inspect(engine).get_table_names()) >= TABLES
    engine.dispose()
