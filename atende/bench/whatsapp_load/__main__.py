"""``python -m atende.bench.whatsapp_load``: the benchmark's command line (every option of ``run_benchmark``,
a throw-away PostgreSQL database per run, ``--compare`` (the embedded then the scale profile, side by side),
the report as JSON)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import atende.bench.whatsapp_load as package
from atende.bench.whatsapp_load.harness import throwaway_postgres
from atende.bench.whatsapp_load.options import PROFILES, add_arguments
from atende.bench.whatsapp_load.run import compare, holds, print_rates, run_benchmark


def main(argv: list[str] | None = None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    p = argparse.ArgumentParser(prog="python -m atende.bench.whatsapp_load", description=(package.__doc__ or "").split("\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    """Run what the options ask for; the exit code (1 if any invariant was violated)."""
    if args.rate is None:
        args.rate = 10.0 if args.during_ingest else 200.0
    if args.during_ingest:
        from atende.bench.whatsapp_load.ingest_load import run_from_args as run_during_ingest

        return run_during_ingest(args)
    profiles = PROFILES if args.compare else (args.profile,)
    if args.rates:
        return _sweep(args, profiles)
    reports = {name: _run(args, name) for name in profiles}
    if args.compare:
        compare(reports)
    if args.json:
        Path(args.json).write_text(json.dumps(reports if args.compare else reports[args.profile], indent=2, default=str))
    return 1 if any(r["violation_count"] for r in reports.values()) else 0


def _sweep(args: argparse.Namespace, profiles: tuple[str, ...]) -> int:
    """A run per rate of ``--rates`` and profile, rising until a rate does not hold; the table and the highest."""
    runs: dict[str, list[dict]] = {}
    for profile in profiles:
        runs[profile] = []
        for rate in args.rates:
            args.rate = rate
            report = _run(args, profile)
            runs[profile].append(report)
            if not holds(report, args.goal_p99_ms):
                break
    print_rates(runs, args.goal_p99_ms)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2, default=str))
    return 1 if any(r["violation_count"] for reports in runs.values() for r in reports) else 0


def _run(args, profile: str) -> dict:
    """One run of ``profile`` with the command line's options, on its own throw-away database if ``--postgres``."""
    drop = None
    database_url = args.database_url
    if args.postgres:
        database_url, drop = throwaway_postgres(args.postgres)
    try:
        return run_benchmark(customers=args.customers, rate=args.rate, seconds=args.seconds, llm_delay_s=args.llm_delay,
                             workers=args.workers, database_url=database_url, redis_url=args.redis,
                             debounce_s=args.debounce, drain_timeout_s=args.drain_timeout,
                             load_in_process=args.in_process_load, profile=profile,
                             api_processes=args.api_processes, worker_processes=args.worker_processes,
                             logs_dir=args.logs, worker_nice=args.worker_nice)
    finally:
        if drop is not None:
            drop()


if __name__ == "__main__":
    sys.exit(main())
