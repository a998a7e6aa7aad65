"""Media out: the assistant sends a file of its knowledge base (the `send_file` tool) with its reply, over the
webhook, the queue and the Graph stand-in: uploaded to Meta's media endpoint, sent as a document through the outbox
like any part, recorded with the reply; an unknown or unsendable file, or another channel, is refused to the model."""
from __future__ import annotations

from sqlalchemy import select

from runtime.models import Message, MessagePart
from runtime.types import ToolCall
from runtime.whatsapp.outbound import send_due
from tests.conftest import requires_shared, shared_doc, wait_for_document
from tests.factories import chat, wait_until
from tests.runtime.whatsapp.test_whatsapp_flow import outbound, post, text_payload, wa  # noqa: F401 (fixture)


def _messages(graph) -> list[dict]:
    """The messages sent (not the uploads)."""
    return [s["json"] for s in graph.sent if s["path"].endswith("/messages")]


def _part_statuses(services) -> list[str]:
    with services.session() as session:
        return list(session.scalars(select(MessagePart.status).order_by(MessagePart.position)))


def _with_file(client, filename: str, data: bytes) -> str:
    assistant = client.get("/api/assistants/loja").json()
    client.patch(f"/api/assistants/{assistant['id']}", json={"config": {
        "tools": ["search_knowledge_base", "send_file"], "retrieval": {"mode": "as_tool"}}}).raise_for_status()
    doc = client.post(f"/api/assistants/{assistant['id']}/documents", files={"file": (filename, data)})
    assert wait_for_document(client, doc.json()["id"])["status"] == "ready"
    return assistant["id"]


@requires_shared
def test_the_assistant_sends_a_knowledge_base_file_with_its_reply(wa):  # noqa: F811
    client, services, model, graph, clock, _ = wa
    pdf = shared_doc("pdf/fake-memo.pdf").read_bytes()
    _with_file(client, "tabela.pdf", pdf)
    model.enqueue([ToolCall("call_0", "send_file", {"filename": "tabela.pdf", "caption": "Tabela de preços"})],
                  "Segue a nossa tabela de preços.")
    post(client, text_payload("wamid.file1", "Pode me mandar a tabela de preços?", clock.now))
    wait_until(lambda: len(_messages(graph)) == 2 and all(m.status == "sent" for m in outbound(services)),
               what="two sends")
    [upload] = graph.uploads
    assert (upload["data"], upload["mime_type"], upload["filename"]) == (pdf, "application/pdf", "tabela.pdf")
    text, document = _messages(graph)
    assert text["type"] == "text" and text["text"]["body"] == "Segue a nossa tabela de preços."
    assert document["type"] == "document" and document["document"] == {
        "id": upload["id"], "caption": "Tabela de preços", "filename": "tabela.pdf"}
    with services.session() as session:
        reply = session.scalars(select(Message).where(Message.direction == "outbound")).one()
        parts = [(p.text, p.status, (p.media or {}).get("filename")) for p in reply.parts]
        assert parts == [("Segue a nossa tabela de preços.", "sent", None), ("Tabela de preços", "sent", "tabela.pdf")]
        assert document["biz_opaque_callback_data"] == reply.parts[1].id and reply.parts[1].channel_message_id


def test_a_failed_upload_is_retried_by_the_outbox_and_the_file_sent_once(wa):  # noqa: F811
    client, services, model, graph, clock, _ = wa
    _with_file(client, "horarios.txt", "Abrimos de segunda a sexta, das 8h às 18h.".encode())
    model.enqueue([ToolCall("call_0", "send_file", {"filename": "horarios.txt"})], "Enviei o arquivo.")
    graph.delay_next(0)  # the text goes as usual
    graph.fail_next(503)  # the upload: Meta down for a moment
    post(client, text_payload("wamid.file2", "Manda os horários?", clock.now))
    wait_until(lambda: _part_statuses(services) == ["sent", "retrying"], what="a retry")
    with services.session() as session:
        reply = session.scalars(select(Message).where(Message.direction == "outbound")).one()
        part = reply.parts[1]
        assert part.status == "retrying" and "media upload" in part.error_title and part.media["filename"] == "horarios.txt"
        part.next_attempt_at = clock.now  # the outbox's next try, now
        session.commit()
        conversation_id = reply.conversation_id
    send_due(services, conversation_id)
    assert len(graph.uploads) == 1 and [m["type"] for m in _messages(graph)] == ["text", "document"]
    with services.session() as session:
        reply = session.scalars(select(Message).where(Message.direction == "outbound")).one()
        assert [p.status for p in reply.parts] == ["sent", "sent"]


def test_unknown_or_unsendable_files_and_other_channels_are_refused_to_the_model(wa):  # noqa: F811
    client, services, model, graph, clock, _ = wa
    aid = _with_file(client, "notas.md", b"# Notas\n\nTexto.")
    model.enqueue([ToolCall("c1", "send_file", {"filename": "nada.pdf"}),
                   ToolCall("c2", "send_file", {"filename": "notas.md"})], "Não consegui enviar.")
    post(client, text_payload("wamid.file3", "Manda o arquivo?", clock.now))
    wait_until(lambda: _messages(graph), what="the reply")
    with services.session() as session:
        reply = session.scalars(select(Message).where(Message.direction == "outbound")).one()
        errors = [c.error for c in reply.tool_calls]
        assert "no file named 'nada.pdf'" in errors[0] and "cannot be sent on WhatsApp" in errors[1]
        assert [p.media for p in reply.parts] == [None]
    assert graph.uploads == []
    model.enqueue([ToolCall("c3", "send_file", {"filename": "notas.md"})], "Veja no site.")
    r = chat(services, aid, "manda o arquivo")  # the API channel: no files
    assert "only be sent on WhatsApp" in r.function_calls[0]["error"]
