"""The WhatsApp benchmark's two modes run tiny on the embedded profile, against the real app (SQLite, the huey
queues, the real embedding model and parser): every post stored once, every inbound message covered by a turn,
every reply sent once, and the report's fields present and consistent. No timing thresholds: the figures are
only checked to be there and to add up."""
from __future__ import annotations

import json

import pytest

from atende.bench.whatsapp_load.customers import marked
from atende.bench.whatsapp_load.ingest_load import BASELINE, DURING, run_ingest_load
from atende.bench.whatsapp_load.replay import DATA_DIR, load_conversations, run_replay
from atende.bench.whatsapp_load.stack import CallLog
from tests.conftest import requires_shared, shared_doc

requires_dialogues = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"dialogues not found at {DATA_DIR}")


def test_call_log_marker_is_the_newest_post_shown():
    """The model's call log ties a call to the newest marked post among the user messages it was shown."""
    messages = [{"role": "system", "content": f"not this {marked('x', 99)}"},
                {"role": "user", "content": marked("Qual o horário?", 3)},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "fontes...\n" + marked("Onde fica?", 17)}]
    marks = [int(n) for m in messages if m["role"] == "user" for n in CallLog.MARKER.findall(m["content"])]
    assert max(marks) == 17


@requires_dialogues
def test_load_conversations_cycles_with_user_turns_only(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"conversation_id": "c1", "turns": [{"speaker": "user", "text": "hi"}, {"speaker": "agent", "text": "yo"},
                                            {"speaker": "action", "text": "x"}, {"speaker": "user", "text": " more "}]},
        {"conversation_id": "c2", "turns": [{"speaker": "agent", "text": "only the agent"}]},
        {"conversation_id": "c3", "turns": [{"speaker": "user", "text": "one"}]},
    ]) + "\n")
    convs = load_conversations(tmp_path, 5)
    assert [c["source"] for c in convs] == ["c1", "c3", "c1", "c3", "c1"]
    assert convs[0]["texts"] == ["hi", "more"]
    assert len(load_conversations(DATA_DIR, 3)) == 3


@requires_shared
def test_ingest_under_load_tiny():
    """4 customers write, then a paper PDF with a table ingests through the admin API while they go on: the document is
    ready, both phases have answered turns with every model call tied to its turn, and nothing was lost or
    sent twice. The phase without ingest lasts until 3 replies came (a loaded machine's first turns are slow)."""
    report = run_ingest_load(shared_doc("pdf/layout-parser-paper-with-table.pdf"), customers=4, rate=2.0, baseline_s=5.0, llm_delay_s=0.1,
                             workers=4, debounce_s=0.5, drain_timeout_s=180.0, ingest_timeout_s=300.0, warmup_s=1.0,
                             baseline_replies=3, quiet=True)
    assert report["drained"], report["state_at_end"]
    assert report["violation_count"] == 0, (report["violations"], report["violation_examples"])
    ingest = report["ingest"]
    assert ingest["finished"] and ingest["status"] == "ready" and ingest["chunks"] >= 1
    assert ingest["duration_s"] > 0 and ingest["upload_started"] < ingest["finished_at"]
    assert report["acks"]["ok"] == report["acks"]["posts"] == report["messages_stored"]
    assert report["replies_sent_to_standin"] == report["turns"]  # one short reply per turn
    phases = report["phases"]
    assert phases["model_calls_unmatched"] == 0
    assert phases[BASELINE]["turns"] >= 3
    for name in (BASELINE, DURING):
        p = phases[name]
        lat = p["reply_latency_excl_model_s"]
        assert p["turns"] >= 1 and lat["n"] == p["turns"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
        assert sum(p["turn_statuses"].values()) == p["turns"]
        assert sum(p["model_calls_per_turn"].values()) == p["turns"]
    assert set(phases["ratio_during_without"]) == {"p50", "p95", "max"}
    in_phases = sum(n * k for name in (BASELINE, DURING) for n, k in phases[name]["model_calls_per_turn"].items())
    assert report["llm"]["calls"] >= in_phases  # the turns at the edges of the phases are not counted


@requires_dialogues
def test_replay_tiny():
    """10 dialogues at once, closed-loop: every user turn posted is answered once (or the conversation stopped at
    a handoff), the figures add up, the server's RSS was sampled."""
    report = run_replay(10, llm_delay_s=0.1, workers=4, debounce_s=0.5, ramp_s=1.0, reply_timeout_s=120.0,
                        rss_every_s=1.0, drain_timeout_s=60.0, quiet=True)
    assert report["drained"], report["state_at_end"]
    assert report["violation_count"] == 0, (report["violations"], report["violation_examples"])
    assert report["conversations"] == 10
    handoffs = report["handoffs"]
    assert report["conversations_completed"] + handoffs["count"] == 10
    assert report["answered_turns"] == report["posts"] == report["acks"]["ok"]
    if not handoffs["count"]:
        assert report["posts"] == report["user_turns_in_dialogues"]
    assert report["turns_in_db"] == report["answered_turns"] == report["replies_sent_to_standin"]
    assert sum(report["turn_statuses"].values()) == report["turns_in_db"]
    assert report["llm"]["calls_per_answered_turn"] >= 0 and report["turn_notes"]
    assert report["throughput_turns_per_s"] > 0
    lat = report["reply_latency_s"]
    assert lat["n"] == report["answered_turns"] and 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    rss = report["rss_mb"]
    assert rss["samples"] >= 2 and 0 < rss["start_mb"] <= rss["peak_mb"] and rss["end_mb"] <= rss["peak_mb"]
    assert rss["series"] and set(rss["peak_by_process"]) == {"bench (app + consumers)"}
