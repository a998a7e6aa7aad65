"""The app under test, started the same way for every mode of the benchmark (``run``, ``ingest_load``, ``replay``).

``serve`` is a context manager: it makes the run's settings (a temporary data directory, SQLite or
``database_url``, the huey queues on SQLite or on ``redis_url`` under the run's own prefix ``bench_<run id>``,
emptied after by ``flush_redis_queues``), builds the services (which migrates the database), starts the
``embedded`` or the ``scale`` profile, registers the assistant "bench" and its WhatsApp sender through the admin
API, starts the queue watch and yields a :class:`Stack`. The chat model is the slow scripted one
(``harness.SlowScriptedLLM`` in process, ``model_server.SlowModelServer`` over HTTP), here with a log of every
call (:class:`CallLog`: when it started and ended, and the newest customer text it was shown), so a mode can
subtract each turn's model time exactly.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from atende.bench.whatsapp_load.harness import BackgroundServer, QueueWatch, SlowScriptedLLM
from atende.bench.whatsapp_load.model_server import SlowModelServer
from atende.bench.whatsapp_load.options import PROFILES
from atende.bench.whatsapp_load.payloads import ADMIN_TOKEN, PHONE_ID, REPLY, SECRET
from atende.bench.whatsapp_load.processes import ScaleProcesses

if TYPE_CHECKING:
    from runtime.services import Services


class CallLog:
    """Mixin for the scripted models: every ``complete`` call is logged as (wall start, wall end, marker), the
    time measured around the model itself (its sleep), so what the product spends around a call (HTTP, parsing)
    is not counted as the model's. The marker is the highest ``(ref N)`` in the user messages it was shown (the
    open loop marks post ``N`` so: the newest message of the customer's turn), or None."""

    MARKER = re.compile(r"\(ref (\d+)\)")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.call_log: list[tuple[float, float, int | None]] = []
        self._log_lock = threading.Lock()

    def complete(self, messages, tools=None, **kwargs):
        start = time.time()
        try:
            return super().complete(messages, tools, **kwargs)
        finally:
            end = time.time()
            marks = [int(n) for m in messages if m.get("role") == "user"
                     for n in self.MARKER.findall(str(m.get("content") or ""))]
            with self._log_lock:
                self.call_log.append((start, end, max(marks, default=None)))


class LoggedScriptedLLM(CallLog, SlowScriptedLLM):
    """The in-process slow scripted model, each call logged."""


class LoggedModelServer(CallLog, SlowModelServer):
    """The slow scripted model over HTTP, each call logged (on the server side: the model's own time)."""


@dataclass
class Stack:
    """What a mode needs of the running app: its URL, the services (the database), the model and its call log,
    the queue watch, the CPU and the processes that serve (for their RSS)."""

    base: str
    services: Services
    llm: LoggedScriptedLLM | LoggedModelServer
    watch: QueueWatch
    server_cpu: Callable[[], float]
    profile: str
    run_id: str
    home: Path
    procs: ScaleProcesses | None = None
    setup: dict = field(default_factory=dict)

    def server_pids(self) -> dict[str, int]:
        """The processes that serve, by name: this one (embedded), or every child and its own children (scale)."""
        if self.procs is None:
            return {"bench (app + consumers)": os.getpid()}
        import psutil  # type: ignore[import-untyped, unused-ignore]

        pids: dict[str, int] = {}
        for name, p in self.procs.procs.items():
            pids[name] = p.pid
            try:
                for i, child in enumerate(psutil.Process(p.pid).children(recursive=True)):
                    pids[f"{name}.{i}"] = child.pid
            except psutil.Error:
                continue
        return pids

    def admin(self) -> httpx.Client:
        """An admin-API client (the bearer token of the bench)."""
        return httpx.Client(base_url=self.base, trust_env=False, timeout=120,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@contextmanager
def serve(profile: str = "embedded", graph_url: str = "", *, database_url: str | None = None,
          redis_url: str | None = None, workers: int = 32, llm_delay_s: float = 2.0, debounce_s: float | None = None,
          api_processes: int = 2, worker_processes: int = 2, ingest_processes: int = 0, logs_dir: Path | None = None,
          run_id: str | None = None, reply: str = REPLY, worker_nice: int = 0) -> Iterator[Stack]:
    """Serve the real app for a run (see the module's docstring); the WhatsApp sender posts to ``graph_url``, the
    scripted model answers ``reply`` to every call.

    ``profile="scale"`` needs ``database_url`` (PostgreSQL) and ``redis_url``; ``ingest_processes`` adds that
    many ``atende worker --queue ingest`` processes (the embedded profile consumes the ingest queue with its own
    thread, ``Settings.ingest_workers``); the scale profile's worker processes run at nice ``worker_nice``."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}")
    if profile == "scale" and not (redis_url and database_url):
        raise ValueError("the scale profile needs a Redis queue and a shared database (redis_url, database_url)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from atende.jobs import flush_redis_queues
    from atende.services import build_services
    from core.settings import Settings

    run_id = run_id or uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="atende-bench-wa-") as home:
        extra: dict[str, Any] = {"whatsapp_debounce_s": debounce_s} if debounce_s is not None else {}
        # the run's own queues on that Redis (another deployment's or run's jobs there are left alone)
        settings = Settings(home=Path(home), database_url=database_url, redis_url=redis_url,
                            redis_prefix=f"bench_{run_id}",
                            workers=workers if profile == "embedded" else 0, whatsapp_graph_url=graph_url,
                            admin_token=ADMIN_TOKEN, **extra)
        services = build_services(settings)  # migrates the database before any child process opens it
        try:
            with ExitStack() as stack:
                procs = None
                if profile == "embedded":
                    base, llm, watch, server_cpu = _embedded(stack, services, llm_delay_s, reply)
                else:
                    base, llm, watch, server_cpu, procs = _scale(
                        stack, services, Path(home), llm_delay_s, debounce_s, api_processes, worker_processes,
                        workers, ingest_processes, logs_dir, reply, worker_nice)
                stack.callback(watch.stop)
                register_sender(base)
                watch.start()
                yield Stack(base, services, llm, watch, server_cpu, profile, run_id, Path(home), procs, setup={
                    "profile": profile if profile == "embedded" else
                    f"scale ({api_processes} API processes, {worker_processes} worker processes"
                    + (f", {ingest_processes} ingest worker processes" if ingest_processes else "")
                    + (f", workers at nice {worker_nice})" if worker_nice else ")"),
                    "database": "postgresql" if database_url and database_url.startswith("postgresql") else "sqlite",
                    "queue": "redis" if redis_url else "sqlite (huey SqliteHuey)",
                    "debounce_s": settings.whatsapp_debounce_s, "workers": workers, "llm_delay_s": llm_delay_s,
                    "embedding_model": settings.embedding_model, "reply": reply})
        finally:
            services.engine.dispose()
            if redis_url:
                flush_redis_queues(redis_url, settings.redis_prefix)


def _embedded(stack: ExitStack, services, llm_delay_s: float, reply: str = REPLY):
    """The app in a uvicorn thread here, its consumers embedded, the slow model in process."""
    from atende.app import create_app
    from runtime.llm_provider import FixedChatModelProvider

    llm = LoggedScriptedLLM(llm_delay_s, reply)
    services.chat_models = FixedChatModelProvider(llm)
    services.embedders.get(services.settings.embedding_model).embed_query("aquecimento")  # before the clock runs
    app = create_app(services=services)  # its lifespan closes the services
    watch = QueueWatch(app.state.huey)
    base = stack.enter_context(BackgroundServer(app))
    return base, llm, watch, time.process_time


def _scale(stack: ExitStack, services, home: Path, llm_delay_s: float, debounce_s: float | None,
           api_processes: int, worker_processes: int, workers: int, ingest_processes: int, logs_dir: Path | None,
           reply: str = REPLY, worker_nice: int = 0):
    """The API and worker processes, the slow model an HTTP endpoint here; the queue watched from Redis."""
    from atende.jobs import HueyQueue

    s = services.settings
    stack.callback(services.close)
    model = LoggedModelServer(llm_delay_s, reply)
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
    procs = ScaleProcesses(env, logs_dir, api_processes, worker_processes, workers, ingest_processes=ingest_processes,
                           worker_nice=worker_nice)
    base = stack.enter_context(procs)
    watch = QueueWatch(HueyQueue.from_settings(services).huey, signals=False)
    return base, model, watch, procs.cpu_s, procs


def register_sender(base: str) -> None:
    """The assistant and the WhatsApp sender the posts are for, through the admin API."""
    with httpx.Client(base_url=base, trust_env=False, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        admin.post("/api/assistants", json={"name": "bench"}).raise_for_status()
        admin.post("/api/whatsapp/senders", json={
            "assistant_id": "bench", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
            "access_token": "bench-token", "app_secret": SECRET, "verify_token": "bench-verify",
        }).raise_for_status()


class RssSampler:
    """Samples the resident memory (RSS, MB) of ``pids()``'s processes every ``every_s`` seconds in a thread:
    ``series`` holds (seconds since start, total MB, {name: MB})."""

    def __init__(self, pids: Callable[[], dict[str, int]], every_s: float = 5.0) -> None:
        self.pids, self.every_s = pids, every_s
        self.series: list[tuple[float, float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._t0 = 0.0

    def sample(self) -> None:
        import psutil  # type: ignore[import-untyped, unused-ignore]

        per: dict[str, float] = {}
        for name, pid in self.pids().items():
            try:
                per[name] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
            except psutil.Error:
                continue
        self.series.append((round(time.monotonic() - self._t0, 1), round(sum(per.values()), 1), per))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._t0 = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()

    def figures(self, rows: int = 12) -> dict:
        """Start, peak and end (total MB and per process), and about ``rows`` evenly spaced samples."""
        if not self.series:
            return {}
        peak = max(self.series, key=lambda s: s[1])
        step = max(1, len(self.series) // rows)
        table = self.series[::step]
        if table[-1] is not self.series[-1]:
            table.append(self.series[-1])
        return {"every_s": self.every_s, "start_mb": self.series[0][1], "peak_mb": peak[1], "peak_at_s": peak[0],
                "end_mb": self.series[-1][1], "start_by_process": self.series[0][2], "peak_by_process": peak[2],
                "end_by_process": self.series[-1][2], "samples": len(self.series),
                "series": [(t, total) for t, total, _ in table]}


@contextmanager
def database_from_args(args) -> Iterator[str | None]:
    """The database the command line asks for: a throw-away one on ``--postgres`` (dropped after), else
    ``--database-url`` (None: SQLite in the run's data directory)."""
    from atende.bench.whatsapp_load.harness import throwaway_postgres

    if not args.postgres:
        yield args.database_url
        return
    url, drop = throwaway_postgres(args.postgres)
    try:
        yield url
    finally:
        drop()


def write_json(path, report: dict) -> None:
    """The report as JSON in ``path`` (if given)."""
    if path:
        import json

        Path(path).write_text(json.dumps(report, indent=2, default=str))
