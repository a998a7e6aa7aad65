"""Webhook acknowledgement benchmark: what one signed post costs the API, posted one after the other.

The real app is served by uvicorn on 127.0.0.1 (a thread of this process) on PostgreSQL and Redis, as an API
process of the scale profile is: no consumer (``ATENDE_WORKERS=0``), each post stored and queued, nothing more.
Posts go one at a time (plain asyncio HTTP/1.1, a connection each, as ``atende bench whatsapp``'s generator
does), so the figures are the path's own latency and CPU, with no queueing in front of it.

Two ways of storing a post take turns, in blocks, in the same run (the machine's noise falls on both):
``intake`` the intake's own pool, which does not ping a connection before the INSERT (``Services.intake``), and
``pinged`` the app's main engine, whose pool pings every connection it hands out (one more round trip). Printed:
for each, ack latency p50/p99 and the process's CPU per post (client and server: both sides of one loopback
exchange), and the ratios.

Run: ``python -m benchmarks.webhook_ack`` (defaults: 4 blocks of 500 posts each way, the loopback PostgreSQL
and Redis database 14).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

from atende.bench.whatsapp_load.harness import BackgroundServer, throwaway_postgres
from atende.bench.whatsapp_load.load import post_status
from atende.bench.whatsapp_load.payloads import ADMIN_TOKEN, numbered_post
from atende.bench.whatsapp_load.stack import register_sender
from atende.bench.whatsapp_load.verify import summarize

WAYS = ("intake", "pinged")


async def _block(port: int, first: int, count: int, run_id: str) -> tuple[list[float], float]:
    """``count`` posts one after the other; their latencies (ms) and the process CPU they took (s)."""
    latencies = []
    cpu0 = time.process_time()
    for i in range(first, first + count):
        _, raw, headers = numbered_post(i, 50, run_id)
        t0 = time.perf_counter()
        status = await post_status("127.0.0.1", port, "/webhooks/whatsapp", raw, headers, 30.0)
        latencies.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"post {i} answered {status}")
    return latencies, time.process_time() - cpu0


def run_benchmark(postgres: str, redis: str, blocks: int = 4, posts: int = 500, quiet: bool = False) -> dict:
    """Serve the app, post ``blocks`` x ``posts`` webhooks each way (alternating), return (and print) the figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from atende.app import create_app
    from atende.jobs import flush_redis_queues
    from atende.services import build_services
    from core.settings import Settings

    database_url, drop = throwaway_postgres(postgres)
    prefix = f"bench_ack_{uuid.uuid4().hex[:8]}"
    run_id = uuid.uuid4().hex[:8]
    latencies: dict[str, list[float]] = {way: [] for way in WAYS}
    cpu: dict[str, float] = dict.fromkeys(WAYS, 0.0)
    try:
        with tempfile.TemporaryDirectory(prefix="atende-bench-ack-") as home:
            settings = Settings(home=Path(home), database_url=database_url, redis_url=redis, redis_prefix=prefix,
                                workers=0, ingest_workers=0, admin_token=ADMIN_TOKEN, secret_key="bench-ack-secret",
                                whatsapp_graph_url="http://127.0.0.1:9")
            services = build_services(settings)
            intake = services.intake_engine
            assert intake is not None, "the intake has a pool of its own on a database server"
            app = create_app(services=services)
            try:
                with BackgroundServer(app) as base:
                    register_sender(base)
                    port = int(base.rsplit(":", 1)[1])
                    asyncio.run(_block(port, 0, 50, run_id))  # warm: connections, compiled statements
                    n = 50
                    for block in range(blocks):
                        for way in (WAYS if block % 2 == 0 else WAYS[::-1]):
                            services.intake_engine = intake if way == "intake" else None
                            got, took = asyncio.run(_block(port, n, posts, run_id))
                            latencies[way] += got
                            cpu[way] += took
                            n += posts
                    services.intake_engine = intake
            finally:
                services.close()
                services.engine.dispose()
                flush_redis_queues(redis, prefix)
    finally:
        drop()
    report = {way: {"posts": len(latencies[way]), "ack_ms": summarize(latencies[way]),
                    "cpu_ms_per_post": round(cpu[way] * 1000 / max(len(latencies[way]), 1), 3)} for way in WAYS}
    a, b = report["intake"], report["pinged"]
    report["ratio_intake_to_pinged"] = {
        "p50": round(a["ack_ms"]["p50"] / b["ack_ms"]["p50"], 3), "p99": round(a["ack_ms"]["p99"] / b["ack_ms"]["p99"], 3),
        "cpu": round(a["cpu_ms_per_post"] / b["cpu_ms_per_post"], 3)}
    report["setup"] = {"blocks": blocks, "posts_per_block": posts, "database": "postgresql", "queue": "redis",
                       "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.machine()}"}
    if not quiet:
        _print(report)
    return report


def _print(report: dict) -> None:
    s = report["setup"]
    print(f"\nwebhook acknowledgement, one post at a time: {s['blocks']} blocks of {s['posts_per_block']} posts each "
          f"way, {s['database']} + {s['queue']}, {s['machine']}")
    for way in WAYS:
        r = report[way]
        print(f"  {way:<7} ack p50 {r['ack_ms']['p50']} ms  p99 {r['ack_ms']['p99']} ms  max {r['ack_ms']['max']} ms   "
              f"CPU {r['cpu_ms_per_post']} ms per post (client and server)")
    ratio = report["ratio_intake_to_pinged"]
    print(f"  intake / pinged: p50 x{ratio['p50']}  p99 x{ratio['p99']}  CPU x{ratio['cpu']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.webhook_ack", description=__doc__.split("\n")[0])
    p.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                   help="an admin URL: a throw-away database is created beside it")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--posts", type=int, default=500, help="posts per block")
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    report = run_benchmark(args.postgres, args.redis, args.blocks, args.posts)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
