from tests.conftest import wait_for_document


def test_upload_and_search_roundtrip(client):
    a = client.post("/api/assistants", json={"name": "shop"}).json()
    r = client.post(f"/api/assistants/{a['id']}/documents",
                    files={"file": ("hours.txt", b"Opening hours\n\nWe open at 9am and close at 6pm on Saturdays.")})
    assert r.status_code == 202, r.text
    doc = wait_for_document(client, r.json()["id"])
    assert doc["status"] == "ready" and doc["chunk_count"] == 1
    res = client.post(f"/api/assistants/{a['id']}/search", json={"query": "when do you close on saturday?"}).json()
    assert res["results"][0]["filename"] == "hours.txt"
