"""GraphClient against the local Graph API stand-in, and the stand-in's signed status webhooks."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runtime.whatsapp.graph import GraphClient, SendResult, recipient_fields
from runtime.whatsapp.models import WhatsAppSender
from runtime.whatsapp.standin import GraphStandIn, post_status, sign, signed_post, status_body
from tests.conftest import SHARED_DATA

TOKEN = "EAAG-secret-token-do-not-log"
PHONE = "5511987654321"
BSUID = "US.13491208655302741918"


@dataclass
class Sender:
    phone_number_id: str = "1122334455667"
    access_token: str = TOKEN
    graph_version: str = "v21.0"


@pytest.fixture
def standin():
    with GraphStandIn() as server:
        yield server


@pytest.fixture
def client(standin):
    with GraphClient(standin.base_url, timeout_s=2, attempts=3, backoff_s=0.01) as graph:
        yield graph


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- success


def test_send_text_returns_wamid_and_posts_meta_shape(standin, client):
    result = client.send_text(Sender(), PHONE, "Olá! Veja https://exemplo.com.br")

    assert result.status == "accepted"
    assert result.wamid and result.wamid.startswith("wamid.")
    assert (result.attempts, result.http_status, result.error_code, result.error_title) == (1, 200, None, None)
    [request] = standin.sent
    assert request["path"] == "/v21.0/1122334455667/messages"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["json"] == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": PHONE, "type": "text",
        "text": {"body": "Olá! Veja https://exemplo.com.br", "preview_url": True},
    }


def test_each_send_gets_its_own_wamid(client):
    first, second = client.send_text(Sender(), PHONE, "um"), client.send_text(Sender(), PHONE, "dois")
    assert first.wamid != second.wamid


def test_reply_to_quotes_the_message(standin, client):
    client.send_text(Sender(), PHONE, "sim", reply_to="wamid.IN123")
    payload = standin.sent[0]["json"]
    assert payload["context"] == {"message_id": "wamid.IN123"}
    assert payload["text"] == {"body": "sim", "preview_url": False}


def test_bsuid_goes_in_recipient_not_to(standin, client):
    result = client.send_text(Sender(), BSUID, "oi")
    payload = standin.sent[0]["json"]
    assert result.status == "accepted"
    assert payload["recipient"] == BSUID and "to" not in payload
    assert payload["recipient_type"] == "individual"


@pytest.mark.parametrize("to, expected", [
    ("5511987654321", {"to": "5511987654321"}),
    ("+55 11 98765-4321", {"to": "+55 11 98765-4321"}),
    ("US.13491208655302741918", {"recipient": "US.13491208655302741918"}),
    ("US.ENT.11815799212886844830", {"recipient": "US.ENT.11815799212886844830"}),
    (" BR.1393abc ", {"recipient": "BR.1393abc"}),
])
def test_recipient_fields(to, expected):
    assert recipient_fields(to) == {"recipient_type": "individual", **expected}


def test_send_template_payload(standin, client):
    result = client.send_template(Sender(), PHONE, "lembrete_consulta", "pt_BR", ["Ana", "terça, 10h"])
    assert result.status == "accepted"
    payload = standin.sent[0]["json"]
    assert payload["type"] == "template"
    assert payload["template"] == {
        "name": "lembrete_consulta", "language": {"code": "pt_BR"},
        "components": [{"type": "body", "parameters": [
            {"type": "text", "text": "Ana"}, {"type": "text", "text": "terça, 10h"}]}],
    }


def test_send_template_without_parameters_has_no_components(standin, client):
    client.send_template(Sender(), PHONE, "hello_world", "en_US", [])
    assert "components" not in standin.sent[0]["json"]["template"]


def test_low_level_send_adds_messaging_product(standin, client):
    result = client.send(Sender(), {"to": PHONE, "type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}})
    assert result.status == "accepted"
    assert standin.sent[0]["json"]["messaging_product"] == "whatsapp"


def test_works_with_the_sender_model(standin, client):
    sender = WhatsAppSender(phone_number_id="999", access_token="model-token", graph_version="v22.0",
                            app_secret="s", verify_token="v", assistant_id="a")
    assert client.send_text(sender, PHONE, "oi").status == "accepted"
    assert standin.sent[0]["path"] == "/v22.0/999/messages"
    assert standin.sent[0]["headers"]["Authorization"] == "Bearer model-token"


# --------------------------------------------------------------------------- retries


def test_500_then_success_is_accepted_after_two_attempts(standin, client):
    standin.fail_next(status=500)
    result = client.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts, result.http_status) == ("accepted", 2, 200)
    assert result.wamid
    assert len(standin.sent) == 2


def test_429_is_retried(standin, client):
    standin.fail_next(status=429)
    result = client.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts) == ("accepted", 2)


@pytest.mark.parametrize("status, code", [(429, 130429), (500, 131000), (503, 131016)])
def test_retryable_errors_fail_after_all_attempts(standin, client, status, code):
    standin.fail_next(status=status, times=3)
    result = client.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts, result.http_status, result.error_code) == ("failed", 3, status, code)
    assert result.wamid is None and result.error_title
    assert len(standin.sent) == 3


def test_backoff_grows_exponentially(standin):
    standin.fail_next(status=503, times=2)
    with GraphClient(standin.base_url, timeout_s=2, attempts=3, backoff_s=0.1) as graph:
        started = time.monotonic()
        result = graph.send_text(Sender(), PHONE, "oi")
    assert result.status == "accepted" and result.attempts == 3
    assert time.monotonic() - started >= 0.1 + 0.2


def test_connection_refused_is_retried_then_failed():
    with GraphClient(f"http://127.0.0.1:{free_port()}", timeout_s=2, attempts=3, backoff_s=0.01) as graph:
        result = graph.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts, result.http_status, result.wamid) == ("failed", 3, None, None)
    assert result.error_title.startswith("could not connect")


def test_dns_failure_is_retried_then_failed(monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # no resolver is asked
    with GraphClient("http://graph.example", timeout_s=2, attempts=2, backoff_s=0.01) as graph:
        result = graph.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts) == ("failed", 2)
    assert result.error_title.startswith("could not connect")


def test_single_attempt_client_does_not_retry(standin):
    standin.fail_next(status=500)
    with GraphClient(standin.base_url, attempts=1, backoff_s=0.01) as graph:
        result = graph.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts, len(standin.sent)) == ("failed", 1, 1)


# --------------------------------------------------------------------------- no retry


def test_read_timeout_is_unknown_after_exactly_one_request(standin):
    standin.delay_next(3)
    with GraphClient(standin.base_url, timeout_s=0.3, attempts=3, backoff_s=0.01) as graph:
        result = graph.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts, result.wamid, result.http_status) == ("unknown", 1, None, None)
    assert "ReadTimeout" in result.error_title
    assert len(standin.sent) == 1


def test_dropped_connection_is_unknown_and_not_retried(standin, client):
    standin.drop_next()
    result = client.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts) == ("unknown", 1)
    assert len(standin.sent) == 1


def test_re_engagement_error_fails_at_once_with_metas_code(standin, client):
    standin.fail_next(status=400, error_code=131047, message="Re-engagement message",
                      details="Message failed to send because more than 24 hours have passed")
    result = client.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.error_code, result.attempts, result.http_status) == ("failed", 131047, 1, 400)
    assert result.error_title == (
        "Re-engagement message: Message failed to send because more than 24 hours have passed")
    assert len(standin.sent) == 1


def test_bad_token_fails_without_retry(standin, client):
    standin.fail_next(status=401)
    result = client.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.error_code, result.attempts) == ("failed", 190, 1)
    assert result.error_title == "Invalid OAuth access token"


@pytest.mark.parametrize("token", ["", f"{TOKEN}\n"])
def test_a_token_that_cannot_be_sent_fails_without_quoting_it(standin, client, token, caplog):
    result = client.send_text(Sender(access_token=token), PHONE, "oi")
    assert (result.status, result.attempts, result.http_status) == ("failed", 1, None)
    assert "access token" in result.error_title
    assert TOKEN not in result.error_title and TOKEN not in caplog.text
    assert standin.sent == []


def test_stand_in_refuses_a_request_without_authorization(standin):
    assert signed_post(standin.base_url + "/v21.0/1/messages", "s", {"messaging_product": "whatsapp", "to": PHONE}) == 401


def test_invalid_url_scheme_fails_without_retry():
    with GraphClient("ftp://127.0.0.1:1", attempts=3, backoff_s=0.01) as graph:
        result = graph.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts) == ("failed", 1)


def test_success_answer_without_message_id_is_unknown():
    with (json_server(200, {"messaging_product": "whatsapp", "messages": []}) as url,
          GraphClient(url, attempts=3, backoff_s=0.01) as graph):
        result = graph.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.attempts, result.http_status) == ("unknown", 1, 200)


def test_non_json_error_answer_is_described():
    with (json_server(404, None, raw=b"<html>not found</html>") as url,
          GraphClient(url, attempts=3, backoff_s=0.01) as graph):
        result = graph.send_text(Sender(), PHONE, "oi")
    assert (result.status, result.error_code, result.attempts) == ("failed", None, 1)
    assert result.error_title.startswith("HTTP 404: <html>")


def test_the_access_token_is_never_logged(standin, client, caplog):
    caplog.set_level(logging.DEBUG)
    standin.fail_next(status=500, times=2)
    standin.fail_next(status=400, error_code=131047, message="Re-engagement message")
    client.send_text(Sender(), PHONE, "oi")
    client.send_text(Sender(), PHONE, "oi")
    with GraphClient(f"http://127.0.0.1:{free_port()}", attempts=2, backoff_s=0.01) as graph:
        graph.send_text(Sender(), PHONE, "oi")
    assert caplog.records  # the failures were logged ...
    assert TOKEN not in caplog.text  # ... without the token
    assert all(TOKEN not in str(r.args) for r in caplog.records)


def test_send_result_is_frozen():
    result = SendResult("accepted", "wamid.1", None, None, 1, 200)
    with pytest.raises(AttributeError):
        result.status = "failed"


def test_attempts_must_be_positive():
    with pytest.raises(ValueError):
        GraphClient("http://127.0.0.1:1", attempts=0)


# --------------------------------------------------------------------------- the stand-in itself


def test_stand_in_records_unanswered_paths_and_answers_like_meta(standin):
    status = signed_post(standin.base_url + "/not-messages", "secret", {"a": 1})
    assert status == 404
    assert standin.sent[0]["path"] == "/not-messages" and standin.sent[0]["json"] == {"a": 1}


def test_stand_in_base_url_needs_a_running_server():
    with pytest.raises(RuntimeError):
        GraphStandIn().base_url  # noqa: B018 (the property raises)


def test_stopping_cuts_a_delayed_request_short():
    standin = GraphStandIn()
    standin.start()
    standin.delay_next(30)
    with GraphClient(standin.base_url, timeout_s=0.2, attempts=1) as graph:
        assert graph.send_text(Sender(), PHONE, "oi").status == "unknown"
    started = time.monotonic()
    standin.stop()
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- webhooks


@contextmanager
def webhook_receiver(status: int = 200):
    """A stdlib server that stores each raw POST body and its headers; answers ``status``."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/webhooks/whatsapp", received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def json_server(status: int, answer, raw: bytes | None = None):
    """A server answering every POST with ``status`` and ``answer`` (or ``raw`` bytes)."""
    data = raw if raw is not None else json.dumps(answer).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_post_status_is_signed_with_the_app_secret():
    with webhook_receiver() as (url, received):
        status = post_status(url, "app-secret", "1122334455667", "wamid.ABC", PHONE, "delivered",
                             timestamp=1700000000, pricing={"billable": True, "pricing_model": "PMP", "category": "service"})
    assert status == 200
    [request] = received
    expected = "sha256=" + hmac.new(b"app-secret", request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Hub-Signature-256"], expected)
    assert request["headers"]["Content-Type"] == "application/json"
    body = json.loads(request["body"])
    value = body["entry"][0]["changes"][0]["value"]
    assert body["object"] == "whatsapp_business_account"
    assert body["entry"][0]["changes"][0]["field"] == "messages"
    assert value["metadata"]["phone_number_id"] == "1122334455667"
    assert value["statuses"] == [{
        "id": "wamid.ABC", "status": "delivered", "timestamp": "1700000000", "recipient_id": PHONE,
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "service"},
    }]


def test_post_status_returns_the_receivers_status():
    with webhook_receiver(status=403) as (url, _):
        assert post_status(url, "s", "1", "wamid.A", PHONE, "sent") == 403


def test_failed_status_carries_errors():
    default = status_body("1", "wamid.A", PHONE, "failed")["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert default["errors"][0]["code"] == 131026
    errors = [{"code": 131047, "title": "Re-engagement message"}]
    given = status_body("1", "wamid.A", PHONE, "failed", errors=errors)["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert given["errors"] == errors


def test_status_body_has_the_shape_of_metas_samples():
    sample_file = SHARED_DATA / "webhooks" / "pywa" / "split" / "message_status__failed.json"
    if not sample_file.is_file():
        pytest.skip("shared webhook samples not found")
    sample = json.loads(sample_file.read_text())
    ours = status_body("1122334455667", "wamid.xyzxyz", "972987654321", "failed", timestamp=1689380458,
                       errors=sample["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"])

    def keys(body):
        value = body["entry"][0]["changes"][0]["value"]
        return (sorted(body), sorted(body["entry"][0]), sorted(body["entry"][0]["changes"][0]), sorted(value),
                sorted(value["metadata"]), sorted(value["statuses"][0]))

    assert keys(ours) == keys(sample)
    assert ours["entry"][0]["changes"][0]["value"]["statuses"] == sample["entry"][0]["changes"][0]["value"]["statuses"]


def test_signed_post_sends_the_exact_signed_bytes():
    body = {"object": "whatsapp_business_account", "entry": [], "note": "ação"}
    with webhook_receiver() as (url, received):
        assert signed_post(url, "k", body) == 200
    assert received[0]["headers"]["X-Hub-Signature-256"] == sign("k", received[0]["body"])
    assert json.loads(received[0]["body"]) == body
