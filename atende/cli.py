"""The ``atende`` command line: serve, admin-token, secrets, worker, users, assistants, kb ingest/search, bench."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from core.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _services(args):
    from atende.services import build_services
    from core.settings import Settings

    return build_services(Settings())


def cmd_serve(args) -> int:
    import uvicorn

    from atende.app import create_app
    from atende.warm import start_warm_up

    services = _services(args)
    app = create_app(services=services, demo=args.demo)
    # its searches need the embedding models; its own workers, if it ingests, the parsers
    start_warm_up(services, parsers=services.settings.workers > 0 and services.settings.ingest_workers > 0)
    command = sys.argv[0] if Path(sys.argv[0]).name == "atende" else "atende"
    print(f"Dashboard: http://{args.host}:{args.port}/dashboard; the admin token (API bearer token and dashboard "
          f"password) is printed by: {command} admin-token", file=sys.stderr, flush=True)
    # the app applies X-Forwarded-* itself, from ATENDE_TRUSTED_PROXIES only (api/app.py)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=False)
    return 0


def cmd_admin_token(args) -> int:
    """Print the admin token: ATENDE_ADMIN_TOKEN if set, else the one generated in the data directory."""
    print(Settings().admin_token)
    return 0


def cmd_secrets_rotate(args) -> int:
    """Re-encrypt every credential stored in the database with ATENDE_DATA_KEY (those under a key of
    ATENDE_DATA_KEYS_OLD, or stored before encryption); every process also does it when it starts."""
    from atende.migrate import migrate
    from atende.services import build_services
    from core.crypto import reencrypt
    from core.db import Base

    services = build_services(Settings(), run_migrations=False)
    migrate(services.engine)
    count = reencrypt(services.engine, Base.metadata)
    print(f"{count} stored secret(s) re-encrypted with the current data key; the old keys can be removed")
    return 0


def cmd_retention_run(args) -> int:
    """Apply the retention rules now, until nothing is due (the queue's scheduler does it a batch a minute)."""
    from atende.services import build_services
    from runtime.retention import run_until_done

    services = build_services(Settings())
    runs = run_until_done(services)
    for run in runs:
        print(f"{run.rule:<15} assistant {run.assistant_id or '-':<32} {run.items:>6} before {run.cutoff:%Y-%m-%d %H:%M}"
              f"  {run.counts}")
    print(f"{len(runs)} retention run(s)")
    return 0


def cmd_worker(args) -> int:
    """Consume the queue(s) ``--queue`` names (default: both) until stopped by a signal."""
    from atende.jobs import CUSTOMER, INGEST, HueyQueue, fit_to_pool, run_workers, worker_consumers
    from atende.warm import start_warm_up
    from runtime.recovery import recover

    services = _services(args)
    services.queue = queue = HueyQueue.from_settings(services)
    queues = _worker_queues(args.queue)
    workers = fit_to_pool(services.settings, args.workers if CUSTOMER in queues else 0,
                          args.ingest_workers if INGEST in queues else 0)
    start_warm_up(services, parsers="ingest" in queues)  # turns search, ingestion embeds (and parses)
    recover(services, sends=True)  # at start, what dead workers left owed (then "recovery.sweep" periodically)
    run_workers(worker_consumers(queue, queues, workers, args.ingest_workers,
                                 services.settings.recovery_interval_s))
    return 0


def _worker_queues(choice: str) -> tuple[str, ...]:
    from atende.jobs import QUEUES

    return QUEUES if choice == "all" else (choice,)


def cmd_assistant_create(args) -> int:
    from kb import registry

    services = _services(args)
    s = services.settings
    with services.session() as session:
        a = registry.create_assistant(
            session, name=args.name, description=args.description,
            embedding_model=args.embedding_model or s.embedding_model,
            chunk_size=s.chunk_size if args.chunk_size is None else args.chunk_size,
            chunk_overlap=s.chunk_overlap if args.chunk_overlap is None else args.chunk_overlap,
        )
        session.commit()
        print(f"{a.id}\t{a.name}\t{a.knowledge_base.embedding_model}")
    return 0


def cmd_assistant_list(args) -> int:
    from kb import registry

    services = _services(args)
    with services.session() as session:
        for a in registry.list_assistants(session):
            print(f"{a.id}\t{a.name}\t{a.knowledge_base.embedding_model}")
    return 0


def cmd_kb_ingest(args) -> int:
    from atende.ingest_files import ingest_paths

    results = ingest_paths(_services(args), args.assistant, [Path(p) for p in args.paths], progress=True)
    width = max((len(r.name) for r in results), default=10)
    for r in results:
        print(f"{r.symbol} {r.name:<{width}}  {r.summary}")
    failed = sum(r.failed for r in results)
    print(f"{len(results)} files: {sum(r.status == 'ready' for r in results)} ingested, "
          f"{sum(r.status == 'unchanged' for r in results)} unchanged, {failed} failed")
    return 1 if failed else 0


def cmd_kb_search(args) -> int:
    from kb import registry
    from kb.search import search

    services = _services(args)
    with services.session() as session:
        kb = registry.get_assistant(session, args.assistant).knowledge_base
        hits = search(services, session, kb, args.query, args.top_k)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=2))
        return 0
    for h in hits:
        where = " · ".join(x for x in (h.filename, f"p. {h.page}" if h.page else "", h.section) if x)
        print(f"{h.rank}. [{h.score:.3f}] {where}\n   {' '.join(h.text.split())[:300]}\n")
    if not hits:
        print("no results")
    return 0


def cmd_chat(args) -> int:
    from runtime.turn import handle_message

    services = _services(args)  # its inline queue delivers the turn's events before the reply is printed
    variables = dict(v.split("=", 1) for v in args.var)
    try:
        result = handle_message(services, assistant_ref=args.assistant, channel="test", sender="console",
                                customer_id=args.customer, text=args.message, variables=variables)
    finally:
        services.close()
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2, default=str))
        return 0 if result.status != "error" else 1
    print(result.reply if result.reply is not None else f"({result.status}: no reply — AI paused or failed)")
    for c in result.function_calls:
        outcome = f"error: {c['error']}" if c["error"] else (c["result"] or "")[:120]
        print(f"  ⚙ {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)}) -> {outcome}")
    if result.sources:
        print("\nSources:")
        for s in result.sources:
            where = " · ".join(x for x in (s.filename, f"p. {s.page}" if s.page else "", s.section) if x)
            print(f"  [{s.rank}] {where} (score {s.score:.2f})")
    t = result.timings
    print(f"\n[{result.status} · conversation {result.conversation_id} · {result.usage.prompt_tokens}+"
          f"{result.usage.completion_tokens} tokens · {t.get('total_ms', 0) / 1000:.1f}s]")
    return 0 if result.status != "error" else 1


def cmd_conversations_export(args) -> int:
    from runtime.review.export import export_conversations
    from runtime.review.filters import ConversationFilters

    filters = ConversationFilters.parse(channel=args.channel, assistant_id=args.assistant_id, since=args.since,
                                        until=args.until, customer=args.customer, waiting_for_human=None)
    # a file (never stdout) is closed in the finally below
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        rows = export_conversations(_services(args), out, args.format, filters, masked=not args.unmasked)
    finally:
        if args.output:
            out.close()
    print(f"{rows} messages exported", file=sys.stderr)
    return 0


def cmd_bench_export(args) -> int:
    from atende.bench.export import run_benchmark

    run_benchmark(messages=args.messages)
    return 0


def cmd_bench_whatsapp(args) -> int:
    from atende.bench.whatsapp_load.__main__ import run_from_args

    return run_from_args(args)


def cmd_bench_replay(args) -> int:
    from atende.bench.whatsapp_load.replay import run_from_args

    return run_from_args(args)


def cmd_bench_ingest(args) -> int:
    from atende.bench.ingest import run_benchmark

    run_benchmark([Path(p) for p in args.paths], model=args.model, batch_sizes=args.batch_sizes)
    return 0


def cmd_bench_turn(args) -> int:
    from atende.bench.turn import run_benchmark

    run_benchmark(turns=args.turns, local=args.local)
    return 0


def cmd_bench_retrieval(args) -> int:
    from atende.evaluation.retrieval import latency_benchmark

    qa = Path(args.qa)
    sets = sorted(p for p in qa.iterdir() if (p / "corpus.jsonl").is_file() and (p / "queries.jsonl").is_file())
    dialogues = sorted(Path(args.dialogues).glob("*.jsonl")) if Path(args.dialogues).is_dir() else []
    print(json.dumps(latency_benchmark([Path(p) for p in args.docs], sets, dialogues, model=args.model,
                                       chunk_size=args.chunk_size), indent=2))
    return 0


def cmd_eval_retrieval(args) -> int:
    from atende.evaluation.retrieval import evaluate, format_table

    result = evaluate(Path(args.corpus), Path(args.queries), model=args.model, split=args.split, limit=args.limit,
                      chunk_size=args.chunk_size, modes=tuple(args.modes.split(",")), cache=not args.no_cache, calibrate=args.calibrate,
                      log=(lambda *a: print(*a, file=sys.stderr)) if args.json else print)
    print(json.dumps(result) if args.json else format_table(result))
    if "min_score" in result and not args.json:
        print("min_score calibration:", json.dumps(result["min_score"]))
    return 0


def cmd_eval_answers(args) -> int:
    from atende.evaluation.answers import evaluate_answers, format_comparison, format_report, run_baseline

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    baseline = None
    if args.baseline:
        argv = ["--corpus", str(Path(args.corpus).resolve()), "--queries", str(Path(args.queries).resolve()),
                "--sample", str(args.sample), "--seed", str(args.seed), "--split", args.split, "--model", args.model,
                "--oos-sample", str(args.oos_sample)] + (["--oos", str(Path(args.oos).resolve())] if args.oos else [])
        log(f"baseline: the same questions with the runtime of {args.baseline}")
        baseline = run_baseline(args.baseline, argv, log)
    result = evaluate_answers(Path(args.corpus), Path(args.queries), model=args.model, sample=args.sample,
                              seed=args.seed, split=args.split, oos_path=Path(args.oos) if args.oos else None,
                              oos_sample=args.oos_sample, log=log)
    if args.json:
        print(json.dumps({**result, "baseline": baseline} if baseline else result, ensure_ascii=False))
    else:
        print(format_report(result))
        if baseline:
            print(f"\nbaseline ({args.baseline}) vs this code, same questions:\n{format_comparison(baseline, result)}")
    return 0


def cmd_eval_approved(args) -> int:
    from atende.evaluation.approved_match import evaluate, format_report

    result = evaluate([Path(d) for d in args.faq], model=args.model, split=args.split, limit=args.limit,
                      calibrate_rule=args.calibrate)
    print(json.dumps(result) if args.json else format_report(result))
    if args.calibrate and result["calibrated"] is None and not args.json:
        print("no threshold and margin meet the calibration targets on every set")
    return 0


def cmd_eval_regression(args) -> int:
    from runtime.regression import run_cases

    services = _services(args)
    try:
        run = run_cases(services, args.assistant, log=(lambda line: print(line, file=sys.stderr)) if args.json else print)
    finally:
        services.close()
    if args.json:
        print(json.dumps({"id": run.id, "assistant_id": run.assistant_id, "status": run.status, "error": run.error,
                          "summary": run.summary, "results": run.results}, ensure_ascii=False))
    else:
        s = run.summary
        print(f"\n{s['passed']} passed, {s['failed']} failed of {s['total']} cases (run {run.id})"
              + (f"\nerror: {run.error}" if run.error else ""))
    return {"passed": 0, "failed": 1}.get(run.status, 2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atende", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API and background jobs")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--demo", action="store_true", help="create the demo assistant and ingest its sample documents")
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("admin-token", help="print the admin token (generated into $ATENDE_HOME/secrets.json unless "
                                           "ATENDE_ADMIN_TOKEN is set)")
    t.set_defaults(func=cmd_admin_token)

    sec = sub.add_parser("secrets", help="the data key that encrypts the credentials stored in the database")
    sec_sub = sec.add_subparsers(dest="secrets_command", required=True)
    sec_sub.add_parser("rotate", help="re-encrypt every stored credential with ATENDE_DATA_KEY (old keys in "
                                      "ATENDE_DATA_KEYS_OLD)").set_defaults(func=cmd_secrets_rotate)

    ret = sub.add_parser("retention", help="retention rules: conversations and raw webhook bodies kept no longer "
                                           "than each assistant's retention says")
    ret.add_subparsers(dest="retention_command", required=True).add_parser(
        "run", help="apply them now, until nothing is due").set_defaults(func=cmd_retention_run)

    w = sub.add_parser("worker", help="run background-job workers (for a Redis queue)")
    w.add_argument("--queue", choices=("all", "customer", "ingest"), default="all",
                   help="the queue(s) to consume: customer (WhatsApp posts, turns, event delivery), ingest "
                        "(ingestion jobs) or all (both, each with its own threads; the default)")
    w.add_argument("--workers", type=int, default=1, help="worker threads on the customer queue")
    w.add_argument("--ingest-workers", type=int, default=1, help="worker threads on the ingest queue")
    w.set_defaults(func=cmd_worker)

    from atende.users_cli import add_arguments as add_users_arguments

    add_users_arguments(sub)

    a = sub.add_parser("assistants", help="manage assistants").add_subparsers(dest="sub", required=True)
    c = a.add_parser("create")
    c.add_argument("name")
    c.add_argument("--description", default="")
    c.add_argument("--embedding-model")
    c.add_argument("--chunk-size", type=int)
    c.add_argument("--chunk-overlap", type=int)
    c.set_defaults(func=cmd_assistant_create)
    a.add_parser("list").set_defaults(func=cmd_assistant_list)

    k = sub.add_parser("kb", help="knowledge base").add_subparsers(dest="sub", required=True)
    i = k.add_parser("ingest", help="ingest files or folders into an assistant's knowledge base")
    i.add_argument("assistant", help="assistant id or name")
    i.add_argument("paths", nargs="+")
    i.set_defaults(func=cmd_kb_ingest)
    q = k.add_parser("search", help="search an assistant's knowledge base")
    q.add_argument("assistant")
    q.add_argument("query")
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_kb_search)

    ch = sub.add_parser("chat", help="test console: send a message as a customer and see the reply with its sources")
    ch.add_argument("assistant")
    ch.add_argument("message")
    ch.add_argument("--customer", default="console", help="customer id (one conversation per customer)")
    ch.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="conversation variable")
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(func=cmd_chat)

    cv = sub.add_parser("conversations", help="review").add_subparsers(dest="sub", required=True)
    ex = cv.add_parser("export", help="export messages with their sources and function calls")
    ex.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    ex.add_argument("--output", "-o", help="file to write (default: standard output)")
    for flag in ("--channel", "--assistant-id", "--since", "--until", "--customer"):
        ex.add_argument(flag)
    ex.add_argument("--unmasked", action="store_true",
                    help="CPF/CNPJ, e-mails, phone numbers and customer ids in clear (masked by default)")
    ex.set_defaults(func=cmd_conversations_export)

    b = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="sub", required=True)
    bi = b.add_parser("ingest", help="time the ingest pipeline per stage against raw encode throughput")
    bi.add_argument("paths", nargs="+")
    bi.add_argument("--model", default="all-minilm-l6-v2")
    bi.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    bi.set_defaults(func=cmd_bench_ingest)
    bw = b.add_parser("whatsapp", help="signed webhook load against the real app with a slow scripted model")
    from atende.bench.whatsapp_load.options import add_arguments as add_whatsapp_bench_arguments

    add_whatsapp_bench_arguments(bw)
    bw.set_defaults(func=cmd_bench_whatsapp)
    brp = b.add_parser("replay", help="replay real dialogues as concurrent WhatsApp conversations, closed-loop: "
                                      "throughput, reply latency, server RSS, handoffs")
    from atende.bench.whatsapp_load.options import add_replay_arguments

    add_replay_arguments(brp)
    brp.set_defaults(func=cmd_bench_replay)
    be = b.add_parser("export", help="stream an export of N messages and watch peak memory")
    be.add_argument("--messages", type=int, default=100_000)
    be.set_defaults(func=cmd_bench_export)
    bt = b.add_parser("turn", help="turn latency per stage (scripted model), and the local model's time per reply")
    bt.add_argument("--turns", type=int, default=60)
    bt.add_argument("--local", type=int, default=0, metavar="N", help="also run N turns on the embedded local model")
    bt.set_defaults(func=cmd_bench_turn)
    br = b.add_parser("retrieval", help="query latency of hybrid vs dense vs keyword search on a 10,000-chunk knowledge base")
    br.add_argument("docs", nargs="+", help="documents or folders (e.g. ../shared/data/docs)")
    br.add_argument("--qa", default="../shared/data/qa", help="folder of QA sets whose passages are added")
    br.add_argument("--model", default=Settings.model_fields["embedding_model"].default)
    br.add_argument("--dialogues", default="../shared/data/conversations", help="folder of dialogue JSONL files added as documents")
    br.add_argument("--chunk-size", type=int, default=48, help="small chunks, to pass 10,000 of them")
    br.set_defaults(func=cmd_bench_retrieval)

    ev = sub.add_parser("eval", help="quality evaluations").add_subparsers(dest="sub", required=True)
    er = ev.add_parser("retrieval", help="recall/MRR/nDCG of atende's retriever vs plain dense and BM25 on a QA set")
    er.add_argument("--corpus", required=True, help="corpus.jsonl: {id, title, text} per line")
    er.add_argument("--queries", required=True, help="queries.jsonl: {id, question, gold_ids} per line")
    er.add_argument("--model", default=Settings.model_fields["embedding_model"].default, help="embedding model")
    er.add_argument("--split", choices=["all", "dev", "test"], default="all",
                    help="only queries whose gold passage is in this half of the corpus")
    er.add_argument("--limit", type=int, default=None, help="at most N queries")
    er.add_argument("--chunk-size", type=int, default=Settings.model_fields["chunk_size"].default)
    er.add_argument("--modes", default="hybrid", help="atende modes to score: hybrid,dense,keyword")
    er.add_argument("--no-cache", action="store_true", help="do not reuse cached embeddings")
    er.add_argument("--calibrate", action="store_true",
                    help="also measure the dense similarity of answers vs uncovered questions (for min_score)")
    er.add_argument("--json", action="store_true", help="print one JSON object")
    er.set_defaults(func=cmd_eval_retrieval)
    ea = ev.add_parser("answers", help="the whole runtime on a sample of QA questions: gold passage cited, token F1")
    ea.add_argument("--corpus", required=True, help="corpus.jsonl: {id, title, text} per line")
    ea.add_argument("--queries", required=True, help="queries.jsonl: {id, question, answers, gold_ids} per line")
    ea.add_argument("--sample", type=int, default=20, help="questions drawn at random (0: all)")
    ea.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ea.add_argument("--split", choices=["all", "dev", "test"], default="test",
                    help="only queries whose gold passage is in this half of the corpus")
    ea.add_argument("--model", default=Settings.model_fields["embedding_model"].default, help="embedding model")
    ea.add_argument("--oos", help="queries.jsonl of another set: asked too, an answer instead of a fallback is invented")
    ea.add_argument("--oos-sample", type=int, default=0, help="out-of-scope questions drawn (default: --sample)")
    ea.add_argument("--baseline", help="git revision whose runtime answers the same questions first, for comparison")
    ea.add_argument("--json", action="store_true", help="print one JSON object with summary and items")
    ea.set_defaults(func=cmd_eval_answers)
    ep = ev.add_parser("approved", help="approved-answer matching on FAQ sets: precision/recall, wrong matches, latency")
    ep.add_argument("--faq", required=True, action="append",
                    help="folder with faq.jsonl and queries.jsonl (repeat to calibrate over several sets)")
    ep.add_argument("--model", default=Settings.model_fields["embedding_model"].default, help="embedding model")
    ep.add_argument("--split", choices=["all", "dev", "test"], default="dev", help="queries in this half (hash of their id)")
    ep.add_argument("--limit", type=int, default=None, help="at most N queries per set")
    ep.add_argument("--calibrate", action="store_true",
                    help="also search the threshold and margin (see atende/evaluation/approved_match.py)")
    ep.add_argument("--json", action="store_true", help="print one JSON object")
    ep.set_defaults(func=cmd_eval_approved)
    eg = ev.add_parser("regression", help="replay an assistant's regression cases through the runtime; exit 1 if any "
                                          "changed, 2 if none could run (unknown assistant, no cases, an error)")
    eg.add_argument("assistant", help="assistant id or name")
    eg.add_argument("--json", action="store_true", help="print the run as one JSON object (case lines go to stderr)")
    eg.set_defaults(func=cmd_eval_regression)
    return p


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from core.crypto import SecretDecryptionError
    from core.errors import DomainError
    from core.secret_store import SecretStoreError
    from ingest.errors import IngestError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from runtime.masking import MaskingFilter

    for handler in logging.getLogger().handlers:  # CPF, e-mails and phone numbers never reach the log in clear
        handler.addFilter(MaskingFilter())
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DomainError, IngestError, ValidationError, SecretStoreError, SecretDecryptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
