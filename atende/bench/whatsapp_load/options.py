"""The benchmark's command-line options, shared by ``python -m atende.bench.whatsapp_load`` and ``atende bench
whatsapp`` (no heavy import: the ``atende`` command line builds its parser from it at every start)."""
from __future__ import annotations

import argparse
from pathlib import Path

PROFILES = ("embedded", "scale")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (also those of ``atende bench whatsapp``)."""
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--rate", type=float, default=None,
                   help="target webhook posts per second (default 200; 10 with --during-ingest)")
    p.add_argument("--seconds", type=float, default=30.0, help="the load's length (with --during-ingest: the first "
                                                               "phase's, without ingest)")
    add_stack_arguments(p)
    p.add_argument("--compare", action="store_true", help="run the embedded profile, then the scale one; print both")
    p.add_argument("--rates", metavar="R1,R2,...", type=_rates, default=None,
                   help="a run per rate, rising, until one does not hold (every post 200, at least 98%% of the target "
                        "rate acknowledged, ack p99 within --goal-p99-ms); prints the highest that held (per profile "
                        "with --compare)")
    p.add_argument("--goal-p99-ms", type=float, default=50.0, help="with --rates: the acknowledgement p99 a rate must keep")
    p.add_argument("--in-process-load", action="store_true", help="run the load generator in the server's process")
    p.add_argument("--worker-nice", type=int, default=0, metavar="N",
                   help="scale profile, open loop: run the worker processes at nice N, as when the API has cores of "
                        "its own (on one small machine the acknowledgements otherwise share the CPU with the turns)")
    p.add_argument("--during-ingest", metavar="PATH", type=Path, default=None,
                   help="ingest under load: --seconds of load, then the same load while PATH is uploaded through "
                        "the admin API and ingests, until it is ready (atende.bench.whatsapp_load.ingest_load)")
    p.add_argument("--ingest-timeout", type=float, default=1800.0, help="with --during-ingest: the longest wait "
                                                                        "for the document to be ready")
    p.add_argument("--warmup", type=float, default=15.0, help="with --during-ingest: the first seconds of load, not "
                                                              "counted in the phase without ingest")


def _rates(text: str) -> list[float]:
    try:
        rates = sorted({float(r) for r in text.split(",") if r.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of rates: {text!r}") from None
    if not rates or rates[0] <= 0:
        raise argparse.ArgumentTypeError("rates must be positive numbers, e.g. 100,200,300")
    return rates


def add_stack_arguments(p: argparse.ArgumentParser) -> None:
    """The options that pick the app under test (profile, database, queue, workers, model), shared by the modes."""
    p.add_argument("--llm-delay", type=float, default=2.0, help="seconds each LLM reply takes")
    p.add_argument("--workers", type=int, default=32,
                   help="customer-queue consumer threads (embedded; in the scale profile, in all worker processes)")
    p.add_argument("--profile", choices=PROFILES, default="embedded",
                   help="embedded: the app and its consumers in this process; scale: API and worker processes "
                        "(needs --postgres or --database-url, and --redis)")
    p.add_argument("--api-processes", type=int, default=2, help="scale profile: uvicorn worker processes")
    p.add_argument("--worker-processes", type=int, default=2, help="scale profile: `atende worker` processes")
    p.add_argument("--logs", metavar="DIR", type=Path, default=None,
                   help="scale profile: keep the API and worker processes' output in DIR (api.log, worker-N.log)")
    p.add_argument("--debounce", type=float, default=None, help="whatsapp_debounce_s (default: the setting, 2 s)")
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--database-url", default=None, help="use this database as is (default: SQLite in a temp dir)")
    p.add_argument("--postgres", metavar="ADMIN_URL", default=None,
                   help="create a throw-away database on this server (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)")
    p.add_argument("--redis", metavar="URL", default=None, help="huey on this Redis database (under a prefix of the run's own)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON")


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    """``atende bench replay``'s options (atende.bench.whatsapp_load.replay)."""
    p.add_argument("--conversations", type=int, default=1000,
                   help="conversations at once (the dialogues are cycled, each a customer of its own)")
    p.add_argument("--data", metavar="DIR", type=Path, default=None,
                   help="folder of dialogue JSONL files (default: ../shared/data/conversations)")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which the conversations start")
    p.add_argument("--reply-timeout", type=float, default=900.0, help="the longest a customer waits for a reply")
    p.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples of the server")
    p.add_argument("--reply", default=None, help="what the scripted model answers (default: an English reply, the "
                                                 "dialogues' language)")
    add_stack_arguments(p)
