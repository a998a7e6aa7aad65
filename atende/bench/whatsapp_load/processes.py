"""The scale profile's app: API processes with no consumer and ``atende worker`` processes, each a child.

The API is ``uvicorn atende.app:create_server_app --factory --workers N`` on one port: uvicorn's supervisor binds the
socket and its N worker processes accept on it, as a production deployment behind one address does (the load
generator does not pick a process; the kernel hands each connection to whichever accepts it). Every process
reads its settings from the environment (``ATENDE_*``): ``ATENDE_WORKERS=0`` and ``ATENDE_INGEST_WORKERS=0`` so
the API processes consume nothing, and M ``atende worker --queue customer --workers W`` processes consume the
Redis queue. The model (``ATENDE_LLM_BASE_URL``) and the Graph API (``ATENDE_WHATSAPP_GRAPH_URL``) are HTTP
stand-ins in the bench process. Each child's output goes to a log file in the data directory.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from atende.services import INTAKE_CONNECTIONS

STARTED = "Application startup complete"  # uvicorn's line, once per API process


PG_CONNECTIONS = 90  # of PostgreSQL's default max_connections (100), left for the processes; the rest for psql & co
INGEST_CONNECTIONS = 4  # of an ingest worker process (one thread)
API_CONNECTIONS = 4  # of an API process besides its webhook intake's (app keys, health checks)


def _pool(connections: int) -> dict[str, str]:
    """The environment giving a process ``connections`` database connections at most."""
    return {"ATENDE_DB_POOL_SIZE": str(connections // 2), "ATENDE_DB_MAX_OVERFLOW": str(connections - connections // 2)}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment, with ``env`` over it and this checkout first on ``PYTHONPATH``."""
    root = str(Path(__file__).resolve().parents[3])
    merged = {**os.environ, **env}
    merged["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return merged


class ScaleProcesses:
    """``api_processes`` uvicorn workers and ``worker_processes`` customer-queue workers (``workers`` threads in
    all, split between them), and ``ingest_processes`` ingest-queue workers (one thread each); ``with`` starts them,
    waits until every API process has started, and gives the API's URL; leaving stops them (SIGTERM, then SIGKILL
    after 20 s) by their process ids."""

    def __init__(self, env: dict[str, str], log_dir: Path, api_processes: int = 2, worker_processes: int = 2,
                 workers: int = 32, start_timeout_s: float = 180.0, ingest_processes: int = 0,
                 worker_nice: int = 0) -> None:
        # PostgreSQL allows 100 connections in all by default: each process gets what its threads may hold at once
        # (atende.jobs.connections_needed: a turn thread holds two), an API process API_CONNECTIONS besides its
        # webhook intake's, an ingest worker INGEST_CONNECTIONS; a worker given fewer runs fewer threads
        # (atende.jobs.fit_to_pool), so a run that does not fit is refused here rather than measured short
        self.threads = [workers // worker_processes + (i < workers % worker_processes) for i in range(worker_processes)]
        self.worker_connections = [2 * max(t, 1) + 1 for t in self.threads]
        total = (sum(self.worker_connections) + (API_CONNECTIONS + sum(INTAKE_CONNECTIONS)) * api_processes
                 + INGEST_CONNECTIONS * ingest_processes)
        if total > PG_CONNECTIONS:
            raise ValueError(f"{workers} worker threads in {worker_processes} processes, {api_processes} API and "
                             f"{ingest_processes} ingest processes may hold {total} PostgreSQL connections, over the "
                             f"{PG_CONNECTIONS} left for them: run fewer --workers")
        self.env = child_env({**_pool(API_CONNECTIONS), **env})
        self.log_dir = log_dir
        self.api_processes, self.worker_processes = api_processes, worker_processes
        self.ingest_processes = ingest_processes
        # the workers' CPU priority below the API's (nice runs the worker in its own process: its pid is the worker's)
        self.nice = ["nice", "-n", str(worker_nice)] if worker_nice else []
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}  # by name (its log is <name>.log)
        self._logs: list = []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (closed in __exit__)
        self._logs.append(log)
        proc = subprocess.Popen(argv, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def __enter__(self) -> str:
        try:
            for i, (threads, connections) in enumerate(zip(self.threads, self.worker_connections, strict=True)):
                self._spawn(f"worker-{i}", [*self.nice, sys.executable, "-m", "atende.cli", "worker", "--queue",
                                            "customer", "--workers", str(max(threads, 1))], _pool(connections))
            for i in range(self.ingest_processes):
                self._spawn(f"ingest-{i}", [sys.executable, "-m", "atende.cli", "worker", "--queue", "ingest",
                                            "--ingest-workers", "1"],
                            _pool(INGEST_CONNECTIONS))
            self._spawn("api", [sys.executable, "-m", "uvicorn", "atende.app:create_server_app", "--factory",
                                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.api_processes),
                                "--log-level", "info", "--no-access-log", "--no-proxy-headers",
                                "--timeout-graceful-shutdown", "5"])
            self._wait_started()
        except BaseException:
            self.__exit__()
            raise
        return f"http://127.0.0.1:{self.port}"

    def _wait_started(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        api_log = self.log_dir / "api.log"
        while time.monotonic() < deadline:
            dead = [name for name, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a child process exited at start: {dead}; logs in {self.log_dir}")
            if api_log.read_text(errors="replace").count(STARTED) >= self.api_processes:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=10, trust_env=False).raise_for_status()
                return
            time.sleep(0.2)
        raise RuntimeError(f"the API processes did not start in {self.start_timeout_s:g} s; logs in {self.log_dir}")

    def cpu_s(self, names: tuple[str, ...] | None = None) -> float:
        """CPU seconds (user + system) used so far by the children (those named, e.g. ``("api",)``, if given) and
        their own children (uvicorn's workers)."""
        import psutil

        total = 0.0
        for name, p in self.procs.items():
            if names is not None and name not in names:
                continue
            try:
                parent = psutil.Process(p.pid)
                for proc in (parent, *parent.children(recursive=True)):
                    t = proc.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def __exit__(self, *exc) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 20
        for p in self.procs.values():
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for log in self._logs:
            log.close()
