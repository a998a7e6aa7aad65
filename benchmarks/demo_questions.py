"""Ask the demo assistant the questions its own documents answer, through a running server's HTTP API.

Start the demo first (``make run``), then::

    python -m benchmarks.demo_questions [--url http://127.0.0.1:8000] [--token TOKEN]

(the token defaults to what ``atende admin-token`` prints: ``ATENDE_ADMIN_TOKEN`` or the data directory's).

Each question (the three a new user tried first, and ten written from ``demo/knowledge`` before any
reply was seen) is sent as a new customer on ``POST /api/chat``; the reply must contain the fact the
documents give (a pattern, checked on accent-folded text) and cite the document that holds it. Prints
one line per question (pass/fail, status, seconds, cited documents, reply) and the reply-time p50/p95;
exits 1 when any question fails.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import uuid

import httpx
import numpy as np

from core.settings import Settings
from kb.keyword import fold

# (question, pattern the reply must match on folded text, document that holds the answer)
QUESTIONS = [
    ("Qual o horário de funcionamento aos sábados?", r"8 ?h.{0,12}12 ?h|8:00.{0,12}12:00", "perguntas-frequentes.md"),
    ("Quanto custa uma limpeza?", r"180", "tabela-de-precos.csv"),
    ("Vocês atendem convênio?", r"odontoprev|amil|sulamerica", "perguntas-frequentes.md"),
    ("Onde fica a clínica?", r"acacias", "perguntas-frequentes.md"),
    ("Quanto tempo demora o clareamento no consultório?", r"90 ?min", ""),
    ("A partir de que idade vocês atendem crianças?", r"\b3 anos", "perguntas-frequentes.md"),
    ("Quanto custa se eu faltar sem avisar?", r"\b50\b", "politica-de-agendamento.txt"),
    ("Com quanto tempo de antecedência posso cancelar?", r"24 ?h", "politica-de-agendamento.txt"),
    ("Qual o preço de um tratamento de canal?", r"1\.?200", "tabela-de-precos.csv"),
    ("Tem estacionamento?", r"ipe|estacionamento conveniado", "perguntas-frequentes.md"),
    ("Estou com muita dor de dente, o que faço?", r"3232.?4545", "perguntas-frequentes.md"),
    ("Posso parcelar o pagamento?", r"6 ?x|6 vezes|seis vezes", "perguntas-frequentes.md"),
    ("Quais documentos preciso levar na primeira consulta?", r"cpf|documento com foto", ""),
]


def ask(client: httpx.Client, assistant: str, question: str) -> tuple[dict, float]:
    """One question as a new customer; the JSON reply (an error answer as status ``HTTP <code>``) and the
    seconds it took."""
    t = time.perf_counter()
    resp = client.post("/api/chat", json={"assistant_id": assistant, "customer_id": f"demo-check-{uuid.uuid4().hex[:8]}",
                                          "message": question})
    seconds = time.perf_counter() - t
    if resp.is_error:  # a failed turn (e.g. 502: the model did not answer in time) is a failed question
        return {"status": f"HTTP {resp.status_code}", "reply": resp.text[:200], "sources": []}, seconds
    return resp.json(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", help="admin token (default: what `atende admin-token` prints)")
    parser.add_argument("--assistant", default="demo")
    a = parser.parse_args()
    a.token = a.token or Settings().admin_token
    failures, times = 0, []
    with httpx.Client(base_url=a.url, headers={"Authorization": f"Bearer {a.token}"}, timeout=300) as client:
        for question, pattern, document in QUESTIONS:
            result, seconds = ask(client, a.assistant, question)
            times.append(seconds)
            reply, cited = result.get("reply") or "", sorted({s["filename"] for s in result["sources"]})
            ok = result["status"] == "answered" and bool(re.search(pattern, fold(reply))) and \
                (not document or document in cited)
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} {result['status']:9} {seconds:5.1f}s {question}\n"
                  f"     sources: {', '.join(cited) or '-'}\n     reply: {reply!r}", flush=True)
    print(f"{len(QUESTIONS) - failures}/{len(QUESTIONS)} answered correctly; reply time p50 "
          f"{np.percentile(times, 50):.1f}s p95 {np.percentile(times, 95):.1f}s")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
