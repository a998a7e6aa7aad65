"""Smoke tests of the WhatsApp load benchmark, embedded and scale profiles: a few seconds at a low rate, every
invariant holds."""
from __future__ import annotations

import pytest

from atende.bench.whatsapp_load.run import run_benchmark
from tests.conftest import REDIS_URL, _postgres_database, redis_client


@pytest.fixture
def pg_url():
    """A throw-away PostgreSQL database (the scale profile's processes share it)."""
    yield from _postgres_database()


def test_whatsapp_load_benchmark_smoke():
    report = run_benchmark(customers=5, rate=10.0, seconds=2.0, llm_delay_s=0.1, workers=4, debounce_s=0.5,
                           drain_timeout_s=60.0, quiet=True)
    assert report["drained"], report["state_at_end"]
    assert report["violation_count"] == 0, (report["violations"], report["violation_examples"])
    assert report["acks"]["ok"] == report["acks"]["posts"] == 20
    assert report["messages_stored"] == 20
    assert report["turns"] >= 5 and report["replies_sent_to_standin"] == report["turns"]


def test_whatsapp_load_benchmark_scale_profile(pg_url):
    """API and worker processes on PostgreSQL and Redis (the test database, under a prefix of the run's own): every post
    stored once, every inbound message covered by one turn, one reply per turn, the model reached over HTTP."""
    redis_client()  # skips (locally) when Redis is unreachable
    report = run_benchmark(customers=5, rate=10.0, seconds=2.0, llm_delay_s=0.1, workers=4, debounce_s=0.5,
                           drain_timeout_s=60.0, database_url=pg_url, redis_url=REDIS_URL, profile="scale",
                           api_processes=2, worker_processes=2, quiet=True)
    assert report["setup"]["profile"].startswith("scale")
    assert report["drained"], report["state_at_end"]
    assert report["violation_count"] == 0, (report["violations"], report["violation_examples"])
    assert report["acks"]["ok"] == report["acks"]["posts"] == 20
    assert report["messages_stored"] == 20
    assert report["llm"]["calls"] >= 1  # the workers reached the model over HTTP
    assert report["turns"] >= 5 and report["replies_sent_to_standin"] == report["turns"]


def _sweep(capsys, goal_ms: str) -> tuple[int, str]:
    import argparse

    from atende.bench.whatsapp_load.__main__ import run_from_args
    from atende.bench.whatsapp_load.options import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--customers", "4", "--rates", "8,4", "--seconds", "1.5", "--llm-delay", "0.1",
                              "--workers", "4", "--debounce", "0.5", "--drain-timeout", "60", "--goal-p99-ms", goal_ms])
    code = run_from_args(args)
    return code, capsys.readouterr().out


def test_a_rate_sweep_runs_rising_rates_until_one_does_not_hold(capsys):
    code, out = _sweep(capsys, "60000")  # every rate holds: both run, lowest first
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("embedded ")]
    assert [line.split()[1] for line in lines] == ["4", "8"] and all(line.endswith("yes") for line in lines)
    assert "highest rate that held, embedded: 8/s" in out

    code, out = _sweep(capsys, "0.001")  # no rate can hold: the sweep stops after the first
    assert code == 0  # a rate that does not hold is a figure, not a failure: nothing was lost
    lines = [line for line in out.splitlines() if line.startswith("embedded ")]
    assert len(lines) == 1 and lines[0].endswith("no")
    assert "highest rate that held, embedded: none of those tried" in out
