"""``run_benchmark``: the real app served with the Graph stand-in and the slow model, the load, the drain,
the checks, and the figures."""
from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from atende.bench.whatsapp_load.harness import BackgroundServer, QueueWatch, SlowScriptedLLM, busy, flush_redis, host_cpu
from atende.bench.whatsapp_load.load import run_load
from atende.bench.whatsapp_load.payloads import ADMIN_TOKEN, PHONE_ID, SECRET
from atende.bench.whatsapp_load.report import print_report
from atende.bench.whatsapp_load.verify import verify, wait_drained


def run_benchmark(customers: int = 100, rate: float = 200.0, seconds: float = 30.0, llm_delay_s: float = 2.0,
                  workers: int = 32, database_url: str | None = None, redis_url: str | None = None, *,
                  debounce_s: float | None = None, drain_timeout_s: float = 120.0, load_in_process: bool = False,
                  quiet: bool = False) -> dict:
    """Serve the real app, post ``rate`` signed webhooks/s for ``seconds`` s, wait for the drain, check the
    database; prints (unless ``quiet``) and returns the figures. ``report["violation_count"]`` must be 0."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from atende.app import create_app
    from atende.services import build_services
    from core.settings import Settings
    from runtime.llm_provider import FixedChatModelProvider
    from runtime.whatsapp.standin import GraphStandIn

    if redis_url:
        flush_redis(redis_url)
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="atende-bench-wa-") as home, GraphStandIn() as graph:
        extra = {"whatsapp_debounce_s": debounce_s} if debounce_s is not None else {}
        settings = Settings(home=Path(home), database_url=database_url, redis_url=redis_url, workers=workers,
                            whatsapp_graph_url=graph.base_url, admin_token=ADMIN_TOKEN, **extra)
        services = build_services(settings)
        llm = SlowScriptedLLM(llm_delay_s)
        services.chat_models = FixedChatModelProvider(llm)
        services.embedders.get(settings.embedding_model).embed_query("aquecimento")  # load it before the clock runs
        app = create_app(services=services)
        watch = QueueWatch(app.state.huey)
        try:
            with BackgroundServer(app) as base:
                _register_sender(base)
                watch.start()
                cpu0, host0 = time.process_time(), host_cpu()
                load = run_load(f"{base}/webhooks/whatsapp", customers, rate, seconds, run_id, in_process=load_in_process)
                cpu1, host1 = time.process_time(), host_cpu()
                drained, drain_s, last_state = wait_drained(services, watch, drain_timeout_s)
                cpu2, host2 = time.process_time(), host_cpu()
                report = verify(services, graph, llm, watch, load, rate, seconds, customers)
                report.update(drained=drained, drain_s=round(drain_s, 1), state_at_end=last_state,
                              drain_timeout_s=drain_timeout_s)
                if not drained:
                    report["violations"]["not_drained"] = 1
                    report["violation_count"] = sum(report["violations"].values())
                load_s = load["wall_end"] - load["wall_t0"]
                report["cpu"] = {  # the server process (app, consumer, stand-in): the load generator is not in it
                    "server_cores_during_load": round((cpu1 - cpu0) / max(load_s, 1e-9), 2),
                    "server_cores_during_drain": round((cpu2 - cpu1) / max(drain_s, 1e-9), 2),
                    "server_cpu_ms_per_post": round((cpu2 - cpu0) * 1000 / max(len(load["rows"]), 1), 2),
                    "host_busy_during_load": busy(host0, host1), "host_busy_during_drain": busy(host1, host2),
                }
        finally:
            watch.stop()
            services.engine.dispose()
            if redis_url:
                flush_redis(redis_url)
    report["setup"] = {
        "database": "postgresql" if database_url and database_url.startswith("postgresql") else "sqlite",
        "queue": "redis" if redis_url else "sqlite (huey SqliteHuey)",
        "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.machine()}",
        "generator": "in-process thread" if load_in_process else "separate process",
        "debounce_s": settings.whatsapp_debounce_s, "workers": workers, "llm_delay_s": llm_delay_s,
    }
    if not quiet:
        print_report(report)
    return report


def _register_sender(base: str) -> None:
    """The assistant and the WhatsApp sender the posts are for, through the admin API."""
    with httpx.Client(base_url=base, trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        admin.post("/api/assistants", json={"name": "bench"}).raise_for_status()
        admin.post("/api/whatsapp/senders", json={
            "assistant_id": "bench", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
            "access_token": "bench-token", "app_secret": SECRET, "verify_token": "bench-verify",
        }).raise_for_status()
