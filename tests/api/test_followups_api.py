"""Follow-ups over real HTTP (uvicorn on loopback): the admin API lists them and marks them done with the admin
token only; the dashboard page shows them with their callback details and its "Done" button closes one."""
from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import pytest

from tests.api.test_widget_abuse import serve
from tests.conftest import ADMIN_TOKEN, make_services
from tests.factories import add_assistant, chat, use_scripted_model

SUNDAY = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)
HOURS = {"timezone": "America/Sao_Paulo", "weekly": {d: [["09:00", "18:00"]] for d in range(5)}}


@pytest.fixture
def served(tmp_path, embedders):
    services = make_services(tmp_path / "home", embedders)
    use_scripted_model(services)
    services.clock = lambda: SUNDAY
    aid = add_assistant(services, "loja", config={"handoff": {"business_hours": HOURS}})
    for customer, name in (("c1", "Ana <b>Lima</b>"), ("c2", "Bruno")):
        chat(services, aid, "Quero falar com um atendente", customer=customer)
        chat(services, aid, name, customer=customer)
    with serve(services) as base:
        yield base, services
    services.engine.dispose()


def test_the_api_lists_and_closes_follow_ups_with_the_admin_token(served):
    base, _ = served
    with httpx.Client(base_url=base) as anonymous:
        assert anonymous.get("/api/followups").status_code == 401
        assert anonymous.post("/api/followups/x/done").status_code == 401
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        listed = admin.get("/api/followups", params={"assistant_id": "loja"}).json()
        assert sorted(f["details"]["name"] for f in listed) == ["Ana <b>Lima</b>", "Bruno"]
        assert {f["asking"] for f in listed} == {"best_time"} and {f["status"] for f in listed} == {"open"}
        assert admin.post("/api/followups/nope/done").status_code == 404
        done = admin.post(f"/api/followups/{listed[0]['id']}/done", json={"by": "joana"}).json()
        assert done["status"] == "done" and done["closed_by"] == "joana" and done["closed_at"]
        assert [f["id"] for f in admin.get("/api/followups", params={"status": "open"}).json()] == [listed[1]["id"]]
        assert admin.get("/api/followups", params={"status": "later"}).status_code == 422


def test_the_dashboard_page_shows_follow_ups_and_closes_one(served):
    base, _ = served
    with httpx.Client(base_url=base) as browser:
        assert browser.get("/dashboard/followups").status_code == 303  # to the login page
        assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN}).status_code == 303
        page = browser.get("/dashboard/followups").text
        assert "Ana &lt;b&gt;Lima&lt;/b&gt;" in page and "<b>Lima" not in page  # customer text is escaped
        ids = re.findall(r'<tr data-id="(\w+)" data-status="open">', page)
        assert len(ids) == 2
        refused = browser.post(f"/dashboard/followups/{ids[0]}/done", data={"by": "x"},
                               headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403
        r = browser.post(f"/dashboard/followups/{ids[0]}/done", data={"by": "maria"}, headers={"Origin": base})
        assert r.status_code == 303
        assert len(re.findall(r'data-status="open"', browser.get("/dashboard/followups").text)) == 1
        done = browser.get("/dashboard/followups", params={"status": "done"}).text
        assert f'<tr data-id="{ids[0]}" data-status="done">' in done and "by maria" in done


def test_the_list_is_bounded(served):
    """The follow-ups listed are at most ``limit`` (100 by default, up to 500), the soonest due first."""
    base, _ = served
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        both = admin.get("/api/followups").json()
        assert len(both) == 2
        assert [f["id"] for f in admin.get("/api/followups", params={"limit": 1}).json()] == [both[0]["id"]]
        assert admin.get("/api/followups", params={"limit": 501}).status_code == 422
        assert admin.get("/api/followups", params={"limit": 0}).status_code == 422
