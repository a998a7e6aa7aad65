"""``run_benchmark``: the real app served (``stack.serve``) with the Graph stand-in and the slow model, the load,
the drain, the checks, and the figures."""
from __future__ import annotations

import os
import platform
import uuid
from pathlib import Path

from atende.bench.whatsapp_load.harness import busy, host_cpu
from atende.bench.whatsapp_load.load import run_load
from atende.bench.whatsapp_load.report import print_report
from atende.bench.whatsapp_load.stack import serve
from atende.bench.whatsapp_load.verify import verify, wait_drained


def run_benchmark(customers: int = 100, rate: float = 200.0, seconds: float = 30.0, llm_delay_s: float = 2.0,
                  workers: int = 32, database_url: str | None = None, redis_url: str | None = None, *,
                  debounce_s: float | None = None, drain_timeout_s: float = 120.0, load_in_process: bool = False,
                  profile: str = "embedded", api_processes: int = 2, worker_processes: int = 2,
                  logs_dir: Path | None = None, worker_nice: int = 0, quiet: bool = False) -> dict:
    """Serve the real app, post ``rate`` signed webhooks/s for ``seconds`` s, wait for the drain, check the
    database; prints (unless ``quiet``) and returns the figures. ``report["violation_count"]`` must be 0.

    ``profile="embedded"``: the app in a thread of this process with ``workers`` consumer threads and the slow
    model in process. ``profile="scale"`` (needs ``database_url`` on PostgreSQL and ``redis_url``):
    ``api_processes`` API processes without consumers and ``worker_processes`` ``atende worker`` processes
    (``workers`` threads in all), the slow model an HTTP endpoint here (``processes``, ``model_server``); their
    output goes to ``logs_dir`` if given (kept), else to the temporary data directory (removed); the workers run
    at nice ``worker_nice``."""
    from runtime.whatsapp.standin import GraphStandIn

    run_id = uuid.uuid4().hex[:8]
    with GraphStandIn() as graph, serve(profile, graph.base_url, database_url=database_url, redis_url=redis_url,
                                        workers=workers, llm_delay_s=llm_delay_s, debounce_s=debounce_s,
                                        api_processes=api_processes, worker_processes=worker_processes,
                                        logs_dir=logs_dir, run_id=run_id, worker_nice=worker_nice) as st:
        llm, watch, server_cpu, services = st.llm, st.watch, st.server_cpu, st.services

        def api_cpu() -> float:  # what acknowledging costs: the API processes' CPU (scale profile)
            return st.procs.cpu_s(("api",)) if st.procs else 0.0

        cpu0, host0, api0 = server_cpu(), host_cpu(), api_cpu()
        load = run_load(f"{st.base}/webhooks/whatsapp", customers, rate, seconds, run_id, in_process=load_in_process)
        cpu1, host1, api1 = server_cpu(), host_cpu(), api_cpu()
        drained, drain_s, last_state = wait_drained(services, watch, drain_timeout_s)
        cpu2, host2 = server_cpu(), host_cpu()
        report = verify(services, graph, llm, watch, load, rate, seconds, customers)
        report.update(drained=drained, drain_s=round(drain_s, 1), state_at_end=last_state,
                      drain_timeout_s=drain_timeout_s)
        if not drained:
            report["violations"]["not_drained"] = 1
            report["violation_count"] = sum(report["violations"].values())
        load_s = load["wall_end"] - load["wall_t0"]
        # the server: this process (app, consumers, stand-ins), or in the scale profile every child process
        report["cpu"] = {
            "server_cores_during_load": round((cpu1 - cpu0) / max(load_s, 1e-9), 2),
            "server_cores_during_drain": round((cpu2 - cpu1) / max(drain_s, 1e-9), 2),
            "server_cpu_ms_per_post": round((cpu2 - cpu0) * 1000 / max(len(load["rows"]), 1), 2),
            "host_busy_during_load": busy(host0, host1), "host_busy_during_drain": busy(host1, host2),
        }
        if st.procs:
            report["cpu"]["api_cpu_ms_per_post"] = round((api1 - api0) * 1000 / max(len(load["rows"]), 1), 2)
            report["cpu"]["api_cores_during_load"] = round((api1 - api0) / max(load_s, 1e-9), 2)
        setup = st.setup
    report["setup"] = {
        "profile": setup["profile"], "database": setup["database"], "queue": setup["queue"],
        "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.machine()}",
        "generator": "in-process thread" if load_in_process else "separate process",
        "debounce_s": setup["debounce_s"], "workers": workers, "llm_delay_s": llm_delay_s,
    }
    if not quiet:
        print_report(report)
    return report


def compare(profiles: dict[str, dict]) -> None:
    """Print the figures of several runs (name -> report) side by side."""
    rows = [("offered posts/s", lambda r: r["acks"]["offered_per_s"]),
            ("acknowledged posts/s", lambda r: r["acks"]["acked_per_s"]),
            ("posts 200 / posted", lambda r: f"{r['acks']['ok']}/{r['acks']['posts']}"),
            ("ack p50 ms (from schedule)", lambda r: r["acks"]["latency_from_schedule_ms"].get("p50")),
            ("ack p99 ms (from schedule)", lambda r: r["acks"]["latency_from_schedule_ms"].get("p99")),
            ("ack max ms", lambda r: r["acks"]["latency_from_schedule_ms"].get("max")),
            ("generator lag p99 ms", lambda r: r["acks"]["generator_lag_ms"].get("p99")),
            ("messages stored", lambda r: r["messages_stored"]),
            ("turns / replies sent", lambda r: f"{r['turns']} / {r['replies_sent_to_standin']}"),
            ("drained (s after load)", lambda r: f"{r['drained']} ({r['drain_s']})"),
            ("stored once, one turn each, one reply", lambda r: "ok" if not r["violation_count"] else r["violations"]),
            ("server cores during load", lambda r: r["cpu"]["server_cores_during_load"]),
            ("machine busy during load", lambda r: r["cpu"]["host_busy_during_load"])]
    width = max(len(name) for name, _ in rows)
    print("\n" + " " * width + "  " + "  ".join(f"{name:>24}" for name in profiles))
    for name, get in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{str(get(r)):>24}" for r in profiles.values()))


def holds(report: dict, goal_p99_ms: float) -> bool:
    """Whether a run's rate held: every post answered 200, at least 98% of the target rate acknowledged, the
    acknowledgement p99 (from each post's scheduled time) within ``goal_p99_ms``."""
    acks = report["acks"]
    p99 = acks["latency_from_schedule_ms"].get("p99")
    return (acks["ok"] == acks["posts"] and acks["acked_per_s"] >= 0.98 * report["target_rate"]
            and p99 is not None and p99 <= goal_p99_ms)


def print_rates(runs: dict[str, list[dict]], goal_p99_ms: float) -> None:
    """The runs of a rate sweep (profile -> reports, rising rates), a line each, and the highest rate that held."""
    print(f"\nrate sweep (holds: every post 200, >= 98% of the target acknowledged, ack p99 <= {goal_p99_ms:g} ms)")
    print(f"{'profile':<9} {'target/s':>8} {'offered/s':>9} {'acked/s':>8} {'200/posted':>11} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'api ms/post':>11} {'violations':>10}  holds")
    for profile, reports in runs.items():
        for r in reports:
            a, lat = r["acks"], r["acks"]["latency_from_schedule_ms"]
            print(f"{profile:<9} {r['target_rate']:>8g} {a['offered_per_s']:>9} {a['acked_per_s']:>8} "
                  f"{a['ok']:>5}/{a['posts']:<5} {lat.get('p50')!s:>8} {lat.get('p99')!s:>8} {lat.get('max')!s:>8} "
                  f"{r['cpu'].get('api_cpu_ms_per_post', '-')!s:>11} {r['violation_count']:>10}  "
                  f"{'yes' if holds(r, goal_p99_ms) else 'no'}")
    for profile, reports in runs.items():
        held = [r["target_rate"] for r in reports if holds(r, goal_p99_ms)]
        print(f"highest rate that held, {profile}: {f'{max(held):g}/s' if held else 'none of those tried'}")
