"""A server process's start-up leaves what it built out of later garbage collections (``atende.warm.freeze_start_up``),
so that no full collection walks the imported modules and the app while a request waits. Checked in child processes:
freezing is for good, not something a test process should do to itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

_START = """
import gc, json
from fastapi.testclient import TestClient
from atende.app import {factory}
with TestClient({call}):
    print(json.dumps({{"frozen": gc.get_freeze_count()}}))
"""


def _frozen_after_start(tmp_path, factory: str, call: str) -> int:
    env = {**os.environ, "ATENDE_HOME": str(tmp_path / "home"), "ATENDE_WORKERS": "0", "ATENDE_INGEST_WORKERS": "0"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    done = subprocess.run([sys.executable, "-c", _START.format(factory=factory, call=call)], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["frozen"]


def test_the_server_factory_freezes_what_start_up_built(tmp_path):
    # tens of thousands of objects: fastapi, sqlalchemy, pydantic, the routes (measured ~320,000)
    assert _frozen_after_start(tmp_path, "create_server_app", "create_server_app()") > 50_000


def test_an_app_built_for_tests_freezes_nothing(tmp_path):
    assert _frozen_after_start(tmp_path, "create_app", "create_app()") == 0
