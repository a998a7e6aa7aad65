"""Read-receipt and typing latency: how soon after Meta posts a customer's message the customer sees it read and
"typing...", at 1 customer (the baseline) and under a load of many, in one run.

Each phase serves the real app (``atende.bench.whatsapp_load.stack.serve``, embedded profile: uvicorn in a thread,
the huey consumer's worker threads, the slow scripted model), with the Graph API stand-in recording every read
receipt with its wall-clock arrival. The load generator (a spawned process, open-loop) posts signed text webhooks
from ``customers`` customers round-robin at ``rate`` posts/s for ``seconds`` s. For every post, the latency is the
stand-in's arrival time of the read/typing call naming its wamid minus the time the post was sent. A post whose
customer wrote again before it was processed is acknowledged through the newer message (Meta marks every earlier
message read with it): counted as ``covered``, not timed. Printed: p50/p95/p99/max per phase, posts never
acknowledged, and the ratio of the loaded p95 to the baseline's.

Run: ``python -m benchmarks.whatsapp_presence`` (defaults: baseline 1 customer at 1 post/s; load 50 customers at
25 posts/s, i.e. each customer every 2 s; 15 s each; the model 2 s per reply; 8 consumer threads).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid

import numpy as np

from atende.bench.whatsapp_load.load import run_load
from atende.bench.whatsapp_load.stack import serve


def measure(customers: int, rate: float, seconds: float, *, workers: int, llm_delay_s: float,
            settle_s: float = 30.0) -> dict:
    """One phase: serve the app, run the load, wait for the receipts; the latency figures in ms."""
    from runtime.whatsapp.standin import GraphStandIn

    run_id = uuid.uuid4().hex[:8]
    with GraphStandIn() as graph, serve("embedded", graph.base_url, workers=workers, llm_delay_s=llm_delay_s,
                                        run_id=run_id) as st:
        load = run_load(f"{st.base}/webhooks/whatsapp", customers, rate, seconds, run_id)
        rows = [r for r in load["rows"] if r.status == 200]
        deadline = time.monotonic() + settle_s
        wanted = {r.wamid for r in rows}
        while time.monotonic() < deadline:
            seen = {r["json"]["message_id"] for r in list(graph.receipts)}
            if wanted <= seen:
                break
            time.sleep(0.5)
        first: dict[str, dict] = {}
        for receipt in list(graph.receipts):
            first.setdefault(receipt["json"]["message_id"], receipt)
    latencies, covered, missing, typing = [], 0, 0, 0
    by_customer: dict[int, list] = {}
    for r in rows:
        by_customer.setdefault(r.customer, []).append(r)
    for r in rows:
        receipt = first.get(r.wamid)
        if receipt is not None:
            latencies.append((receipt["wall"] - (load["wall_t0"] + r.sent_s)) * 1000)
            typing += bool(receipt["json"].get("typing_indicator"))
        elif any(o.i > r.i and o.wamid in first for o in by_customer[r.customer]):
            covered += 1
        else:
            missing += 1
    figures: dict = {"customers": customers, "rate": rate, "seconds": seconds, "posts": len(load["rows"]),
                     "acknowledged_200": len(rows), "timed": len(latencies), "with_typing": typing,
                     "covered_by_newer": covered, "never_acknowledged": missing}
    if latencies:
        p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
        figures.update(p50_ms=round(p50, 1), p95_ms=round(p95, 1), p99_ms=round(p99, 1),
                       max_ms=round(max(latencies), 1), within_1s=round(sum(v <= 1000 for v in latencies)
                                                                       / len(latencies), 4))
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--baseline-rate", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--llm-delay", type=float, default=2.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    common = dict(workers=args.workers, llm_delay_s=args.llm_delay)
    baseline = measure(1, args.baseline_rate, args.seconds, **common)
    loaded = measure(args.customers, args.rate, args.seconds, **common)
    report = {"machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}",
              "workers": args.workers, "llm_delay_s": args.llm_delay, "baseline": baseline, "load": loaded}
    if baseline.get("p95_ms") and loaded.get("p95_ms"):
        report["p95_load_over_baseline"] = round(loaded["p95_ms"] / baseline["p95_ms"], 2)
    print(json.dumps(report, indent=2))
    for name, f in (("baseline", baseline), ("load", loaded)):
        print(f"{name:8s} {f['customers']:3d} customers {f['rate']:5.1f} posts/s: read+typing after the webhook "
              f"p50 {f.get('p50_ms')} ms, p95 {f.get('p95_ms')} ms, p99 {f.get('p99_ms')} ms, max {f.get('max_ms')} "
              f"ms; within 1 s {f.get('within_1s')}; covered by a newer message {f['covered_by_newer']}, "
              f"never {f['never_acknowledged']}")
    return report


if __name__ == "__main__":
    main()
