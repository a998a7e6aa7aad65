"""The app under load and what watches it: the uvicorn thread, the slow chat model, the queue's counters,
the machine's CPU, and the throw-away PostgreSQL database."""
from __future__ import annotations

import collections
import threading
import time
import uuid

from atende.bench.whatsapp_load.payloads import REPLY


class SlowScriptedLLM:
    """A chat model that never runs out: every reply sleeps ``delay_s`` (like a remote LLM) and says REPLY."""

    def __init__(self, delay_s: float, reply: str = REPLY, name: str = "slow-scripted") -> None:
        self.delay_s, self.reply, self.name = delay_s, reply, name
        self.calls = self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()

    def complete(self, messages, tools=None, *, temperature: float = 0.2, max_tokens: int = 256,
                 timeout: float = 120.0):
        from runtime.types import ChatResponse, Usage

        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
        finally:
            with self._lock:
                self.in_flight -= 1
        words = sum(len(str(m.get("content") or "").split()) for m in messages)
        return ChatResponse(self.reply, usage=Usage(words, len(self.reply.split())), model=self.name)


class BackgroundServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a background thread; ``with`` gives its URL."""

    def __init__(self, app) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bench-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


class QueueWatch:
    """huey signal counters per task name (executions, errors, time) and a 1 s sampler of the backlog.

    ``signals=False`` (the consumers run in other processes, where this one's signals never fire): the backlog
    only; the counters stay empty and ``running`` 0."""

    def __init__(self, huey, signals: bool = True) -> None:
        from huey import signals as S

        self.huey, self._lock = huey, threading.Lock()
        self.enqueued, self.executed, self.errors = collections.Counter(), collections.Counter(), collections.Counter()
        self.busy_s = collections.Counter()
        self.error_texts: collections.Counter = collections.Counter()
        self._started: dict[str, float] = {}
        self.samples: list[tuple[float, int, int, int]] = []  # (t, queued, scheduled, running)
        self._stop = threading.Event()
        self.S = S
        if signals:
            huey.signal()(self._on_signal)

    def _on_signal(self, signal, task, *args) -> None:
        S = self.S
        with self._lock:
            if signal == S.SIGNAL_ENQUEUED:
                self.enqueued[task.name] += 1
            elif signal == S.SIGNAL_EXECUTING:
                self._started[task.id] = time.perf_counter()
            elif signal in (S.SIGNAL_COMPLETE, S.SIGNAL_ERROR, S.SIGNAL_INTERRUPTED, S.SIGNAL_CANCELED):
                start = self._started.pop(task.id, None)
                self.executed[task.name] += 1
                if start is not None:
                    self.busy_s[task.name] += time.perf_counter() - start
                if signal == S.SIGNAL_ERROR:
                    self.errors[task.name] += 1
                    self.error_texts[f"{task.name}: {type(args[0]).__name__}: {str(args[0])[:160]}" if args else task.name] += 1

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._started)

    def counts(self) -> tuple[int, int]:
        return self.huey.pending_count(), self.huey.scheduled_count()

    def start(self) -> None:
        t0 = time.monotonic()

        def sample():
            while not self._stop.wait(1.0):
                try:
                    queued, scheduled = self.counts()
                except Exception:  # noqa: BLE001 (a locked queue.db: skip the sample)
                    continue
                self.samples.append((time.monotonic() - t0, queued, scheduled, self.running))

        threading.Thread(target=sample, name="bench-queue-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def host_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy(a, b) -> float | None:
    """Share of the machine's CPU time that was busy between two ``host_cpu`` readings (all processes)."""
    if a is None or b is None or b[1] == a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]), 2)


def throwaway_postgres(admin_url: str):
    """Create a database next to ``admin_url``'s; returns (url, drop)."""
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"atende_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop
