"""``python -m atende.bench.whatsapp_load``: the benchmark's command line (every option of ``run_benchmark``,
a throw-away PostgreSQL database, the report as JSON)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import atende.bench.whatsapp_load as package
from atende.bench.whatsapp_load.harness import throwaway_postgres
from atende.bench.whatsapp_load.run import run_benchmark


def main(argv: list[str] | None = None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    p = argparse.ArgumentParser(prog="python -m atende.bench.whatsapp_load", description=(package.__doc__ or "").split("\n")[0])
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--rate", type=float, default=200.0, help="target webhook posts per second")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--llm-delay", type=float, default=2.0, help="seconds each LLM reply takes")
    p.add_argument("--workers", type=int, default=32, help="embedded huey consumer threads")
    p.add_argument("--debounce", type=float, default=None, help="whatsapp_debounce_s (default: the setting, 2 s)")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--database-url", default=None, help="use this database as is (default: SQLite in a temp dir)")
    p.add_argument("--postgres", metavar="ADMIN_URL", default=None,
                   help="create a throw-away database on this server (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)")
    p.add_argument("--redis", metavar="URL", default=None, help="huey on this Redis database (FLUSHED before and after)")
    p.add_argument("--in-process-load", action="store_true", help="run the load generator in the server's process")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON")
    args = p.parse_args(argv)
    drop = None
    database_url = args.database_url
    if args.postgres:
        database_url, drop = throwaway_postgres(args.postgres)
    try:
        report = run_benchmark(customers=args.customers, rate=args.rate, seconds=args.seconds, llm_delay_s=args.llm_delay,
                               workers=args.workers, database_url=database_url, redis_url=args.redis,
                               debounce_s=args.debounce, drain_timeout_s=args.drain_timeout,
                               load_in_process=args.in_process_load)
    finally:
        if drop is not None:
            drop()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 1 if report["violation_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
