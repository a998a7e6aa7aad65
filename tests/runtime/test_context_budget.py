"""The prompt is measured against the model's context before every call and trimmed to fit: history first
(whole exchanges), then the lowest-ranked sources, then tool results, then the customer's message; the
system message stays. Counted with the real tokenizer of the embedded llama.cpp server (Qwen 1.5B), and a
long conversation answered by the real model at a small context instead of ending as an error turn."""
from __future__ import annotations

import importlib.util
import json
import re

import pytest
from sqlalchemy import select

from ingest.pipeline import run_job
from kb import registry
from kb.types import Source
from runtime.config import AssistantConfig, merge_config
from runtime.context_budget import (MARGIN_TOKENS, ContextBudget, ContextTooSmall, EstimatedTokenCounter,
                                    ServerTokenCounter, token_counter)
from runtime.llm import ScriptedChatModel
from runtime.llm_provider import FixedChatModelProvider
from runtime.local_llm import LlamaCppServer, SupervisedLocalModel, default_model_path
from runtime.models import Message, MessageSource, Turn
from runtime.prompt import build_messages, turn_message
from runtime.turn import handle_message
from tests.conftest import DOCS, SHARED_DATA, make_services, requires_shared

MODEL_PATH = default_model_path()
CONTEXT = 1024
ARTICLE = DOCS / "txt" / "norwich-city.txt"  # a long English Wikipedia article

pytestmark = [
    pytest.mark.llm,
    requires_shared,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama_cpp is not installed (run scripts/setup_llm.sh)"),
    pytest.mark.skipif(not MODEL_PATH.is_file(), reason=f"model file {MODEL_PATH} is absent (run scripts/setup_llm.sh)"),
]


@pytest.fixture(scope="module")
def local():
    """The embedded server with Qwen 1.5B at a small context, as the runtime supervises it."""
    model = SupervisedLocalModel(lambda: LlamaCppServer(MODEL_PATH, n_threads=2, n_ctx=CONTEXT), model="local")
    model.start()
    yield model
    model.close()


@pytest.fixture(scope="module")
def counter(local) -> ServerTokenCounter:
    return token_counter(local, context=99)


def paragraphs(words: int = 110) -> list[str]:
    """The article's prose (from its first sentence on) in passages of ``words`` words."""
    text = ARTICLE.read_text(encoding="utf-8", errors="replace")
    prose = text[text.index("Iwan Wyn Roberts (born"):].split()
    return [" ".join(prose[i:i + words]) for i in range(0, len(prose) - words, words)]


def sources(texts: list[str]) -> list[Source]:
    return [Source(rank=i, chunk_id=f"c{i}", document_id="d", version=1, filename="norwich-city.txt",
                   page=None, section="", score=0.5, text=t) for i, t in enumerate(texts, 1)]


def prompt(history: list[tuple[str, str]], shown: list[Source], user_text: str) -> list[dict]:
    return build_messages(AssistantConfig(), {"business_name": "Norwich City"}, history, user_text, shown)


def max_tokens_leaving(counter, limit: int) -> int:
    """The max_tokens that leaves ``limit`` tokens for the prompt."""
    return counter.context - MARGIN_TOKENS - limit


def test_the_count_is_the_servers_own_prompt_count_within_a_few_tokens(local, counter):
    text = paragraphs()
    messages = prompt([("user", "Who is Iwan Roberts?"), ("assistant", text[3][:300])], sources([text[0][:500]]),
                      "Quando ele nasceu?")
    tools = [{"type": "function", "function": {"name": "transfer_to_human", "description": "Hand over to a person.",
                                               "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}}}}]
    tool_round = [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {
            "name": "transfer_to_human", "arguments": json.dumps({"reason": "wants a person"})}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "Transferred: a person replies here shortly."},
    ]
    for sent, offered in ((messages, None), (messages, tools), (messages + tool_round, None)):
        counted = counter.prompt_tokens(sent, offered, 60)
        served = local.complete(sent, offered, temperature=0, max_tokens=1, timeout=300).usage.prompt_tokens
        assert abs(counted - served) <= 3, (len(sent), offered is not None, counted, served)  # MARGIN_TOKENS absorbs it
    assert counter.context == CONTEXT


def test_the_estimate_over_counts_the_real_tokenizer_on_english_and_portuguese(counter):
    estimate = EstimatedTokenCounter(CONTEXT)
    portuguese = [json.loads(line)["text"] for line in (SHARED_DATA / "qa" / "faquad_pt" / "corpus.jsonl").open()][:20]
    for text in paragraphs()[:20] + portuguese:
        assert estimate.text_tokens(text, 1) >= counter.text_tokens(text, 60)


def test_history_goes_first_a_whole_exchange_at_a_time(counter):
    text = paragraphs()
    history = [("user", text[10][:300]), ("assistant", text[11][:400]), ("assistant", text[12][:400]),
               ("user", "And then?"), ("assistant", text[13][:400])]
    messages = prompt(history, sources(text[:2]), "Quando ele nasceu?")
    system, last = dict(messages[0]), dict(messages[-1])
    first_exchange = sum(counter.message_tokens(m, 60) for m in messages[1:4])
    full = counter.prompt_tokens(messages, None, 60)
    budget = ContextBudget(messages, history=len(history), sources=sources(text[:2]), user_text="Quando ele nasceu?")

    budget.fit(counter, None, max_tokens=max_tokens_leaving(counter, full - first_exchange + 1), timeout=60)

    # the customer's first message went with both replies that followed it; the rest is as it was
    assert messages == [system, {"role": "user", "content": "And then?"}, {"role": "assistant", "content": text[13][:400]}, last]
    assert budget.sources == sources(text[:2])
    assert budget.note == f"context {CONTEXT} tokens: dropped 3 history messages"


def test_then_the_lowest_ranked_sources_and_the_log_is_what_the_prompt_shows(counter):
    text = paragraphs()
    shown = sources([t[:700] for t in text[:3]])
    messages = prompt([("user", "Hi"), ("assistant", "Hello!")], shown, "When was Iwan Roberts born?")
    without_history = counter.prompt_tokens([messages[0], messages[-1]], None, 60)
    third = counter.text_tokens(shown[2].text, 60)
    budget = ContextBudget(messages, history=2, sources=shown, user_text="When was Iwan Roberts born?")

    limit = without_history - third - 40  # source 3 must go and source 2 lose a little
    budget.fit(counter, None, max_tokens=max_tokens_leaving(counter, limit), timeout=60)

    assert len(messages) == 2 and messages[0]["role"] == "system"
    assert [s.rank for s in budget.sources] == [1, 2] and budget.sources[0] == shown[0]
    assert len(budget.sources[1].text) < len(shown[1].text)
    assert messages[1] == turn_message(budget.sources, "When was Iwan Roberts born?")  # exactly what is logged
    assert "[3]" not in messages[1]["content"] and budget.sources[1].text in messages[1]["content"]
    assert counter.prompt_tokens(messages, None, 60) <= limit
    assert budget.note == f"context {CONTEXT} tokens: dropped 2 history messages, shortened source 2, dropped source 3"


def test_tool_results_are_cut_before_the_customer_message_which_is_cut_last(counter):
    text = paragraphs()
    question = " ".join(text[5].split()[:120])  # a customer pasting a long text
    messages = prompt([], [], question) + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {
            "name": "lookup_order", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": text[0]},
    ]
    system = dict(messages[0])
    budget = ContextBudget(messages, history=0, sources=[], user_text=question)
    before = counter.prompt_tokens(messages, None, 60)
    tool_tokens = counter.text_tokens(text[0], 60)

    budget.fit(counter, None, max_tokens=max_tokens_leaving(counter, before - tool_tokens // 2), timeout=60)
    assert messages[-1]["content"].endswith(" …") and text[0].startswith(messages[-1]["content"][:-2])
    assert budget.user_text == question and not budget.cut_customer

    budget.fit(counter, None, max_tokens=max_tokens_leaving(counter, counter.text_tokens(system["content"], 60) + 150),
               timeout=60)
    assert messages[0] == system
    assert budget.cut_customer and question.startswith(budget.user_text[:-2]) and len(budget.user_text) < len(question)
    assert messages[1]["content"].endswith(f"Customer message:\n{budget.user_text}")
    assert budget.note.endswith(f"cut 1 tool results, cut the customer's message to {len(budget.user_text)} characters")


def test_a_system_prompt_longer_than_the_context_is_a_clear_error(counter):
    long_prompt = " ".join(paragraphs()[:6])
    messages = build_messages(AssistantConfig(system_prompt=long_prompt), {}, [], "hi", [])
    with pytest.raises(ContextTooSmall, match=f"context of {CONTEXT} tokens minus max_tokens 256"):
        ContextBudget(messages, history=0, sources=[], user_text="hi").fit(counter, None, max_tokens=256, timeout=60)


def test_a_long_conversation_is_answered_at_a_small_context_not_an_error_turn(tmp_path, embedders, local):
    """The old engine sent the whole prompt and the server refused it (an error turn); now the oldest
    history is dropped and the turn says so."""
    services = make_services(tmp_path / "home", embedders)
    scripted = ScriptedChatModel()
    services.chat_models = FixedChatModelProvider(scripted)
    with services.session() as session:
        a = registry.create_assistant(session, name="norwich", embedding_model="all-minilm-l6-v2", chunk_size=256,
                                      chunk_overlap=32)
        a.config = merge_config({}, {"system_prompt": "You answer questions about Norwich City's players.",
                                     "temperature": 0, "retrieval": {"top_k": 3, "min_score": 0.0}})
        job = registry.register_upload(session, services.blobs, a.knowledge_base, ARTICLE.name, ARTICLE.read_bytes(),
                                       10**8).job.id
        session.commit()
        aid = a.id
    assert run_job(services, job).status == "ready"

    def chat(text: str):
        return handle_message(services, assistant_ref=aid, channel="api", sender="api", customer_id="fan", text=text)

    # four earlier exchanges with long replies (passages of the article): the history alone nearly fills the context
    replies = paragraphs()[:4]
    scripted.enqueue(*[r[:700] for r in replies])
    for question in ("Who is Iwan Roberts?", "Which clubs did he play for?", "Did he play for Wales?",
                     "What did he do after retiring?"):
        assert chat(question).status == "answered"

    services.chat_models = FixedChatModelProvider(local)
    r = chat("When was Iwan Roberts born?")

    assert r.status in ("answered", "fallback"), r.error
    with services.session() as session:
        reply = session.scalar(select(Message).where(Message.id == r.message_id))
        turn = session.get(Turn, reply.turn_id)
        logged = session.scalars(select(MessageSource).where(MessageSource.message_id == reply.id)
                                 .order_by(MessageSource.rank)).all()
    assert re.match(rf"context {CONTEXT} tokens: dropped \d+ history messages", turn.error), turn.error
    assert [(s.rank, s.text) for s in logged] == [(s.rank, s.text) for s in r.sources]
