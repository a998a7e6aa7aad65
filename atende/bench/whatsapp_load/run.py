"""``run_benchmark``: the real app served with the Graph stand-in and the slow model, the load, the drain,
the checks, and the figures."""
from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx

from atende.bench.whatsapp_load.harness import BackgroundServer, QueueWatch, SlowScriptedLLM, busy, host_cpu
from atende.bench.whatsapp_load.load import run_load
from atende.bench.whatsapp_load.model_server import SlowModelServer
from atende.bench.whatsapp_load.options import PROFILES
from atende.bench.whatsapp_load.payloads import ADMIN_TOKEN, PHONE_ID, SECRET
from atende.bench.whatsapp_load.processes import ScaleProcesses
from atende.bench.whatsapp_load.report import print_report
from atende.bench.whatsapp_load.verify import verify, wait_drained


def run_benchmark(customers: int = 100, rate: float = 200.0, seconds: float = 30.0, llm_delay_s: float = 2.0,
                  workers: int = 32, database_url: str | None = None, redis_url: str | None = None, *,
                  debounce_s: float | None = None, drain_timeout_s: float = 120.0, load_in_process: bool = False,
                  profile: str = "embedded", api_processes: int = 2, worker_processes: int = 2,
                  logs_dir: Path | None = None, quiet: bool = False) -> dict:
    """Serve the real app, post ``rate`` signed webhooks/s for ``seconds`` s, wait for the drain, check the
    database; prints (unless ``quiet``) and returns the figures. ``report["violation_count"]`` must be 0.

    ``profile="embedded"``: the app in a thread of this process with ``workers`` consumer threads and the slow
    model in process. ``profile="scale"`` (needs ``database_url`` on PostgreSQL and ``redis_url``):
    ``api_processes`` API processes without consumers and ``worker_processes`` ``atende worker`` processes
    (``workers`` threads in all), the slow model an HTTP endpoint here (``processes``, ``model_server``); their
    output goes to ``logs_dir`` if given (kept), else to the temporary data directory (removed)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}")
    if profile == "scale" and not (redis_url and database_url):
        raise ValueError("the scale profile needs a Redis queue and a shared database (redis_url, database_url)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from atende.jobs import flush_redis_queues
    from atende.services import build_services
    from core.settings import Settings
    from runtime.whatsapp.standin import GraphStandIn

    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="atende-bench-wa-") as home, GraphStandIn() as graph:
        extra = {"whatsapp_debounce_s": debounce_s} if debounce_s is not None else {}
        # the run's own queues on that Redis (another deployment's or run's jobs there are left alone)
        settings = Settings(home=Path(home), database_url=database_url, redis_url=redis_url,
                            redis_prefix=f"bench_{run_id}",
                            workers=workers if profile == "embedded" else 0, whatsapp_graph_url=graph.base_url,
                            admin_token=ADMIN_TOKEN, **extra)
        services = build_services(settings)  # migrates the database before any child process opens it
        try:
            with ExitStack() as stack:
                if profile == "embedded":
                    base, llm, watch, server_cpu = _embedded(stack, services, llm_delay_s)
                else:
                    base, llm, watch, server_cpu = _scale(stack, services, Path(home), llm_delay_s, debounce_s,
                                                          api_processes, worker_processes, workers, logs_dir)
                stack.callback(watch.stop)
                _register_sender(base)
                watch.start()
                cpu0, host0 = server_cpu(), host_cpu()
                load = run_load(f"{base}/webhooks/whatsapp", customers, rate, seconds, run_id, in_process=load_in_process)
                cpu1, host1 = server_cpu(), host_cpu()
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
        finally:
            services.engine.dispose()
            if redis_url:
                flush_redis_queues(redis_url, settings.redis_prefix)
    report["setup"] = {
        "profile": profile if profile == "embedded" else
        f"scale ({api_processes} API processes, {worker_processes} worker processes)",
        "database": "postgresql" if database_url and database_url.startswith("postgresql") else "sqlite",
        "queue": "redis" if redis_url else "sqlite (huey SqliteHuey)",
        "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.machine()}",
        "generator": "in-process thread" if load_in_process else "separate process",
        "debounce_s": settings.whatsapp_debounce_s, "workers": workers, "llm_delay_s": llm_delay_s,
    }
    if not quiet:
        print_report(report)
    return report


def _embedded(stack: ExitStack, services, llm_delay_s: float):
    """The app in a uvicorn thread here, its consumers embedded, the slow model in process."""
    from atende.app import create_app
    from runtime.llm_provider import FixedChatModelProvider

    llm = SlowScriptedLLM(llm_delay_s)
    services.chat_models = FixedChatModelProvider(llm)
    services.embedders.get(services.settings.embedding_model).embed_query("aquecimento")  # before the clock runs
    app = create_app(services=services)  # its lifespan closes the services
    watch = QueueWatch(app.state.huey)
    base = stack.enter_context(BackgroundServer(app))
    return base, llm, watch, time.process_time


def _scale(stack: ExitStack, services, home: Path, llm_delay_s: float, debounce_s: float | None,
           api_processes: int, worker_processes: int, workers: int, logs_dir: Path | None):
    """The API and worker processes, the slow model an HTTP endpoint here; the queue watched from Redis."""
    from atende.jobs import HueyQueue

    s = services.settings
    stack.callback(services.close)
    model = SlowModelServer(llm_delay_s)
    model_url = stack.enter_context(model)
    env = {"ATENDE_HOME": str(home), "ATENDE_DATABASE_URL": s.database_url or "", "ATENDE_REDIS_URL": s.redis_url or "",
           "ATENDE_REDIS_PREFIX": s.redis_prefix,
           "ATENDE_WORKERS": "0", "ATENDE_INGEST_WORKERS": "0", "ATENDE_ADMIN_TOKEN": ADMIN_TOKEN,
           "ATENDE_WHATSAPP_GRAPH_URL": s.whatsapp_graph_url, "ATENDE_LLM_BASE_URL": model_url,
           "ATENDE_LLM_API_KEY": "bench", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if debounce_s is not None:
        env["ATENDE_WHATSAPP_DEBOUNCE_S"] = str(debounce_s)
    logs_dir = logs_dir or home / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    procs = ScaleProcesses(env, logs_dir, api_processes, worker_processes, workers)
    base = stack.enter_context(procs)
    watch = QueueWatch(HueyQueue.from_settings(services).huey, signals=False)
    return base, model, watch, procs.cpu_s


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


def _register_sender(base: str) -> None:
    """The assistant and the WhatsApp sender the posts are for, through the admin API."""
    with httpx.Client(base_url=base, trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        admin.post("/api/assistants", json={"name": "bench"}).raise_for_status()
        admin.post("/api/whatsapp/senders", json={
            "assistant_id": "bench", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
            "access_token": "bench-token", "app_secret": SECRET, "verify_token": "bench-verify",
        }).raise_for_status()
