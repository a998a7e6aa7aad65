"""The same flows in both run profiles, on real processes (tests/system/conftest.py): a real document ingested
through one API process is searchable -- by keywords too -- from the other one, and a change to the knowledge
base made through one process is seen by the other's keyword index; a signed WhatsApp message is answered
exactly once, also when Meta delivers it again to another API process."""
from __future__ import annotations

import time

from tests.conftest import requires_shared
from tests.system.conftest import REPLY, Stack
from tests.factories import wait_until
from tests.system.stack import admin_client
from tests.system.world import (
    customer_number,
    deliver,
    message_body,
    messages,
    new_assistant,
    replies_to,
    search,
    upload,
    wait_ready,
)


@requires_shared
def test_a_document_ingested_through_one_api_process_is_searchable_from_the_other(profile: Stack):
    first, other = profile.apis[0], profile.apis[-1]  # the embedded profile has one API process
    number = new_assistant(first, "kb")
    essay = upload(first, number.assistant_id, "html/ideas-page.html")
    wait_ready(other, essay)
    hits = search(other, number.assistant_id, "how to notice anomalies at the frontiers of knowledge")
    assert hits and hits[0]["document_id"] == essay
    keyword = search(first, number.assistant_id, "anomalies fractally", mode="keyword")
    assert keyword and {h["document_id"] for h in keyword} == {essay}  # the first process's index: one document
    assert search(first, number.assistant_id, "Flyers Maple Leafs", mode="keyword") == []

    cups = upload(other, number.assistant_id, "csv/stanley-cups.csv")  # a change made through the other process
    wait_ready(first, cups)
    keyword = search(first, number.assistant_id, "Flyers Maple Leafs", mode="keyword")
    assert keyword and keyword[0]["document_id"] == cups  # the first process's index was rebuilt

    with admin_client(other) as client:
        assert client.delete(f"/api/documents/{essay}").status_code in (200, 202, 204)
    assert search(first, number.assistant_id, "anomalies fractally", mode="keyword") == []


def test_a_whatsapp_message_is_answered_exactly_once(profile: Stack, graph):
    number = new_assistant(profile.apis[0], "wa")
    customer = customer_number()
    raw = message_body(number, customer, "When do you open on Saturdays?")
    deliver(profile.apis[0], number, raw)
    deliver(profile.apis[-1], number, raw)  # Meta delivers it again, to another process
    assert wait_until(lambda: replies_to(graph, customer), 60, "the reply sent") == [REPLY]
    wait_until(lambda: ("outbound", "sent") in messages(profile.engine, customer), 30, "the reply marked sent")
    time.sleep(3)  # the sweeps (every 2 s, in each worker) pass over it again: still one reply
    assert messages(profile.engine, customer) == [("inbound", "answered"), ("outbound", "sent")]
    assert replies_to(graph, customer) == [REPLY]


def test_the_procfile_names_the_processes_the_scale_profile_runs():
    import shlex

    from atende import cli
    from tests.conftest import REPO
    from tests.system.stack import VENV_BIN

    processes = dict(line.split(": ", 1) for line in (REPO / "Procfile").read_text().splitlines()
                     if line.strip() and not line.startswith("#"))
    assert set(processes) == {"api", "worker-customer", "worker-ingest", "chroma"}
    for name, command in processes.items():
        argv = [word for word in shlex.split(command.replace("$PORT", "8000")) if "=" not in word]
        if argv[0] == "atende":
            args = cli.build_parser().parse_args(argv[1:])  # what `atende` would run: exits on a wrong option
            assert args.func.__name__ == ("cmd_serve" if name == "api" else "cmd_worker")
        else:
            assert argv[:2] == ["chroma", "run"] and (VENV_BIN / "chroma").exists()
    assert "ATENDE_WORKERS=0" in processes["api"]  # jobs run in the workers only
    assert "--queue customer" in processes["worker-customer"] and "--queue ingest" in processes["worker-ingest"]
