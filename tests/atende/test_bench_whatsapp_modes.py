"""The WhatsApp benchmark's two modes run tiny on the embedded profile, against the real app (SQLite, the huey
queues, the real embedding model and parser): every post stored once, every inbound message covered by a turn,
every reply sent once, and the report's fields present and consistent. No timing thresholds: the figures are
only checked to be there and to add up."""
from __future__ import annotations

import json

import pytest

from atende.bench.whatsapp_load.customers import marked
from atende.bench.whatsapp_load.replay import DATA_DIR, load_conversations, run_replay
from atende.bench.whatsapp_load.stack import CallLog

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
