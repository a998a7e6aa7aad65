"""Engine set-up: the connection pool is sized by the settings."""
from __future__ import annotations

from atende.services import build_services
from core.db import make_engine
from core.settings import Settings


def test_the_pool_holds_what_the_settings_allow(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}", pool_size=3, max_overflow=4)
    assert engine.pool.size() == 3 and engine.pool._max_overflow == 4  # noqa: SLF001 (no public accessor)
    services = build_services(Settings(home=tmp_path, db_pool_size=5, db_max_overflow=0))
    assert services.engine.pool.size() == 5 and services.engine.pool._max_overflow == 0  # noqa: SLF001
