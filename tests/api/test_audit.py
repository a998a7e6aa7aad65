"""The audit trail over the real app: changes and personal-data reads recorded with who, when, what and from where
(the signed-in user), plain reads and refused requests not; no customer named in it; listed,
filtered and exported by admins, never changed through the API."""
from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from atende.app import create_app
from runtime.audit import AuditEntry
from tests.conftest import ADMIN_TOKEN

PHONE = "5511987654321"


def _entries(client) -> list[dict]:
    return client.get("/api/audit", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()


def test_changes_and_personal_data_reads_are_recorded_with_who_and_what(sqlite_services):
    with TestClient(create_app(services=sqlite_services)) as client:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert client.post("/api/assistants", json={"name": "loja"}, headers=admin).status_code == 201
        assert client.get("/api/assistants", headers=admin).status_code == 200  # a plain read: not recorded
        assert client.get("/api/conversations/export", params={"customer": PHONE}, headers=admin).status_code == 200
        assert client.post(f"/api/customers/{PHONE}/erase", json={"requested_by": "dpo"}, headers=admin).status_code == 200
        assert client.post("/api/assistants", json={"name": "x"},
                           headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401  # refused: not here
        # a dashboard session: signed in with the token, then a change through the API with the cookie alone
        assert client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False).status_code == 303
        assert client.patch("/api/assistants/loja", json={"description": "nova"}).status_code == 200

        entries = _entries(client)
        # the admin token and the session it opened both stand for the bootstrap admin: the actor is that user
        seen = [(e["actor"], e["user_id"], e["kind"], e["method"], e["route"], e["status"]) for e in reversed(entries)]
        admin = ("admin@localhost", "bootstrap")
        assert seen[:4] == [
            (*admin, "change", "POST", "/api/assistants", 201),
            (*admin, "read", "GET", "/api/conversations/export", 200),
            (*admin, "change", "POST", "/api/customers/{customer_id}/erase", 200),
            (*admin, "change", "PATCH", "/api/assistants/{assistant_id}", 200),
        ], seen
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert all(e["client"] for e in entries)
        # no customer named: the path keeps a reference, the query is masked
        assert PHONE not in repr(entries)
        erase = next(e for e in entries if e["route"] == "/api/customers/{customer_id}/erase")
        assert erase["path"].startswith("/api/customers/customer:")
        export = next(e for e in entries if e["route"] == "/api/conversations/export")
        assert export["query"] == {"customer": ["*********4321"]}

        # filtered, exported as CSV, and reading the trail is itself recorded
        reads = client.get("/api/audit", params={"kind": "read"}, headers=admin).json()
        assert {e["kind"] for e in reads} == {"read"} and any(e["route"] == "/api/audit" for e in reads)
        table = list(csv.DictReader(io.StringIO(client.get("/api/audit/export", headers=admin).text)))
        assert {"at", "actor", "client", "kind", "route", "status"} <= set(table[0])
        assert any(r["route"] == "/api/customers/{customer_id}/erase" for r in table)
        with sqlite_services.session() as session:
            before = session.scalar(select(func.count()).select_from(AuditEntry))
        # nothing changes or deletes an entry through the API
        methods = {m for path, ops in client.get("/openapi.json").json()["paths"].items() if "/audit" in path
                   for m in ops}
        assert methods == {"get"}
        assert client.delete("/api/audit", headers=admin).status_code == 405
        with sqlite_services.session() as session:
            assert session.scalar(select(func.count()).select_from(AuditEntry)) >= before
