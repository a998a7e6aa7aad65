"""The website sources' admin API on the real app (its embedded ingest consumer runs the syncs) against a site on
loopback; the address guard lets loopback through only because these tests set ``website_allow_private``."""
from __future__ import annotations

import re
import time

import pytest

from benchmarks.website_sync import local_site
from kb import websites
from tests.conftest import ADMIN_TOKEN, requires_shared
from tests.ingest.test_website_sync import build_site

pytestmark = requires_shared


@pytest.fixture
def site(tmp_path):
    with local_site(tmp_path / "site") as s:
        build_site(s)
        yield s


@pytest.fixture
def api(client, sqlite_services):
    sqlite_services.settings.website_allow_private = True
    r = client.post("/api/assistants", json={"name": "loja", "embedding_model": "all-minilm-l6-v2"})
    assert r.status_code == 201, r.text
    return client, r.json()["id"]


def wait_for_run(client, source_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.get(f"/api/websites/{source_id}/runs").json()
        if runs and runs[0]["status"] not in ("queued", "running"):
            return runs[0]
        time.sleep(0.1)
    raise AssertionError(f"the sync of {source_id} did not finish in {timeout}s")


def test_create_list_update_sync_runs_delete(api, site, sqlite_services):
    client, aid = api
    body = {"url": f"{site.url}/sitemap.xml", "kind": "sitemap", "request_interval_s": 0, "exclude": ["/cp1252*"]}
    r = client.post(f"/api/assistants/{aid}/websites", json=body)
    assert r.status_code == 201, r.text
    source = r.json()
    assert source["kind"] == "sitemap" and source["sync_interval_hours"] == 24 and source["next_sync_at"]
    first = wait_for_run(client, source["id"])
    assert (first["status"], first["pages_seen"], first["pages_added"]) == ("succeeded", 3, 3)
    assert client.post(f"/api/assistants/{aid}/websites", json=body).status_code == 409  # the same URL again

    listed = client.get(f"/api/assistants/{aid}/websites").json()
    assert [(s["id"], s["pages"], s["last_run"]["id"]) for s in listed] == [(source["id"], 3, first["id"])]
    hits = client.post(f"/api/assistants/{aid}/search", json={"query": "A que horas a loja abre no sábado?"}).json()
    assert hits["results"][0]["filename"] == f"{site.url}/horarios.html"

    r = client.patch(f"/api/websites/{source['id']}", json={"sync_interval_hours": 0, "exclude": []})
    assert r.status_code == 200 and r.json()["next_sync_at"] is None and r.json()["exclude"] == []
    r = client.patch(f"/api/websites/{source['id']}", json={"url": f"{site.url}/horarios.html"})
    assert r.status_code == 422 and "not XML" in r.json()["detail"]  # a changed URL is checked like a new one

    r = client.post(f"/api/websites/{source['id']}/sync")
    assert r.status_code == 202 and r.json()["trigger"] == "manual"
    second = wait_for_run(client, source["id"])
    assert (second["id"], second["pages_added"], second["pages_unchanged"]) == (r.json()["id"], 1, 3)
    runs = client.get(f"/api/websites/{source['id']}/runs").json()
    assert [x["id"] for x in runs] == [second["id"], first["id"]]
    r = client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get(f"/dashboard/knowledge?assistant_id={aid}").text  # the knowledge-base page shows the run
    assert f"{site.url}/sitemap.xml" in page and "st-succeeded" in page and "manual only" in page
    assert "4 seen · 1 added · 0 changed · 3 unchanged · 0 removed · 0 failed" in page
    assert f"{site.url}/cp1252.html" in page  # now a document of the knowledge base

    with sqlite_services.session() as session:  # a run waiting in the queue: no second one, no delete
        websites.start_run(session, websites.get_source(session, source["id"]))
        session.commit()
    assert client.post(f"/api/websites/{source['id']}/sync").status_code == 409
    assert client.delete(f"/api/websites/{source['id']}").status_code == 409
    with sqlite_services.session() as session:
        websites.active_run(session, websites.get_source(session, source["id"])).status = "failed"
        session.commit()

    assert client.delete(f"/api/websites/{source['id']}").status_code == 204
    assert client.delete(f"/api/websites/{source['id']}").status_code == 404
    assert client.get(f"/api/websites/{source['id']}").status_code == 404
    assert client.get(f"/api/assistants/{aid}/documents").json() == []  # its pages left search with it


def test_a_source_that_cannot_work_is_refused_with_the_reason(api, site):
    client, aid = api
    cases = [
        ({"url": f"{site.url}/horarios.html", "kind": "sitemap"}, "the sitemap is not XML"),
        ({"url": f"{site.url}/private/segredo.html"}, "robots.txt of .* forbids atende"),
        ({"url": f"{site.url}/nowhere.html"}, "answered HTTP 404"),
        ({"url": "ftp://example.com/"}, "http:// or https://"),
        ({"url": "http://127.0.0.1:9/"}, "the site is unreachable"),
    ]
    for body, reason in cases:
        r = client.post(f"/api/assistants/{aid}/websites", json=body)
        assert r.status_code == 422, (body, r.text)
        assert re.search(reason, r.json()["detail"]), (reason, r.json())
    assert client.get(f"/api/assistants/{aid}/websites").json() == []


def test_bad_requests_get_a_clear_4xx(api, site, monkeypatch):
    from api import throttle

    client, aid = api
    monkeypatch.setattr(throttle, "FREE_FAILURES", 1000)
    post = f"/api/assistants/{aid}/websites"
    assert client.post(post, json={"url": "x" * 600}).status_code == 422
    assert client.post(post, json={"url": f"{site.url}/", "max_pages": 0}).status_code == 422
    assert client.post(post, json={"url": f"{site.url}/", "kind": "ftp"}).status_code == 422
    assert client.post(post, json={"url": f"{site.url}/", "include": ["x" * 300]}).status_code == 422
    assert client.post(post, json={"url": f"{site.url}/", "include": ["*"] * 60}).status_code == 422
    assert client.post(post, json=[1, 2]).status_code == 422
    assert client.post(post, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    nested = b"[" * 50_000 + b"]" * 50_000  # refused by the body caps' nesting limit
    assert client.post(post, content=nested, headers={"Content-Type": "application/json"}).status_code == 400
    huge = b'{"url": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    assert client.post(post, content=huge, headers={"Content-Type": "application/json"}).status_code == 413
    assert client.post("/api/assistants/nobody/websites", json={"url": f"{site.url}/"}).status_code == 404
    for method, path in (("GET", "/api/websites/nope"), ("PATCH", "/api/websites/nope"),
                         ("DELETE", "/api/websites/nope"), ("POST", "/api/websites/nope/sync"),
                         ("GET", "/api/websites/nope/runs")):
        assert client.request(method, path, json={}).status_code == 404, (method, path)
    token = client.headers.pop("Authorization")
    try:
        for method, path in (("GET", f"/api/assistants/{aid}/websites"), ("POST", post), ("GET", "/api/websites/x"),
                             ("PATCH", "/api/websites/x"), ("DELETE", "/api/websites/x"),
                             ("POST", "/api/websites/x/sync"), ("GET", "/api/websites/x/runs")):
            r = client.request(method, path, json={"url": f"{site.url}/"})
            assert r.status_code == 401, (method, path, r.status_code)
    finally:
        client.headers["Authorization"] = token
    assert client.get(f"/api/assistants/{aid}/websites").json() == []
