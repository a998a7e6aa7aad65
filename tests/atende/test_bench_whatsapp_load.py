"""Smoke test of the WhatsApp load benchmark: a few seconds at a low rate, every invariant holds."""
from __future__ import annotations

from atende.bench.whatsapp_load.run import run_benchmark


def test_whatsapp_load_benchmark_smoke():
    report = run_benchmark(customers=5, rate=10.0, seconds=2.0, llm_delay_s=0.1, workers=4, debounce_s=0.5,
                           drain_timeout_s=60.0, quiet=True)
    assert report["drained"], report["state_at_end"]
    assert report["violation_count"] == 0, (report["violations"], report["violation_examples"])
    assert report["acks"]["ok"] == report["acks"]["posts"] == 20
    assert report["messages_stored"] == 20
    assert report["turns"] >= 5 and report["replies_sent_to_standin"] == report["turns"]
