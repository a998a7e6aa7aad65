"""WhatsApp load benchmark: signed webhooks at a steady rate against the real app, then the bookkeeping checked.

The real app (``create_app``) is served by uvicorn on 127.0.0.1 in a background thread, with the
embedded huey consumer running ``workers`` threads; the Graph API is the local ``GraphStandIn`` and the
chat model a "slow scripted LLM" whose every reply sleeps ``llm_delay_s``. A load generator in a
separate process (plain asyncio HTTP/1.1, one connection per post, so it does not share the server's
GIL) posts signed text webhooks from ``customers`` distinct customers (round-robin), each with a
unique wamid, open-loop: post ``i`` is
scheduled at ``t0 + i / rate`` whatever happened to the earlier ones, and its acknowledgement latency is
measured **from its scheduled time** (so a stalled server or a lagging generator is not hidden; the
latency from the actual send is reported too).

After the load it waits (bounded by ``drain_timeout_s``) until every post is processed, every inbound
message is covered by a turn, every reply is sent and the queue is empty, then checks from the database:
each acknowledged wamid stored exactly once; every inbound message covered by a turn; one reply per
turn, sent in as many parts as it splits into; messages received by the stand-in == parts with status
``sent`` (and none sent twice). Debounce is reported (turns per customer, messages per turn, turns that started
before their newest message was ``whatsapp_debounce_s`` old).

SQLite and the SQLite huey queue in a temporary data dir by default; ``database_url`` (PostgreSQL) and
``redis_url`` (the huey queue; that Redis database is FLUSHED before and after) select the other setup.
Run: ``python -m atende.bench.whatsapp_load`` (defaults: 100 customers, 200 posts/s, 30 s, LLM 2 s,
32 workers); ``--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres`` creates and drops a
throw-away database; ``--redis redis://127.0.0.1:6379/14``. ``BENCH_PROGRESS=1`` prints the generator's
progress every 5 s; ``kill -USR1 <pid>`` dumps every thread's stack (where a stalled run waits).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

PHONE_ID, SECRET, ADMIN_TOKEN = "106540352200001", "bench-app-secret", "bench-admin-token"
REPLY = "Olá! Recebemos sua mensagem e já vamos ajudar. *Horário*: seg a sex, 9h às 18h."
TEXTS = ["Oi", "Qual o horário?", "Quanto custa a limpeza?", "Vocês atendem sábado?", "Onde fica?", "Obrigado!"]


# --------------------------------------------------------------------------------------- the chat model


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


# --------------------------------------------------------------------------------------- the load generator


def customer_id(c: int) -> str:
    return str(5511900000000 + c)


def text_body(wamid: str, customer: str, text: str, ts: int) -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
             "contacts": [{"profile": {"name": f"Cliente {customer[-4:]}"}, "wa_id": customer}],
             "messages": [{"from": customer, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": text}}]}
    return {"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"value": value, "field": "messages"}]}]}


async def _post(host: str, port: int, path: str, raw: bytes, signature: str) -> int:
    """One HTTP/1.1 POST on its own connection (``Connection: close``); returns the status code."""
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"User-Agent: facebookexternalua\r\nX-Hub-Signature-256: {signature}\r\n"
            f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode() + raw)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("closed without an answer")
        status = int(status_line.split()[1])
        await reader.read()  # headers and body, until the server closes
        return status
    finally:
        writer.close()


async def _load(url: str, customers: int, rate: float, seconds: float, run_id: str, timeout_s: float) -> dict:
    """Open-loop load: post i is due at t0 + i/rate and runs as its own task (never waits for the others).

    A plain asyncio HTTP/1.1 client, one connection per post: httpx's connection pool spends O(waiting
    requests) per event, so once the server falls behind it eats a whole core and stops keeping the schedule.
    """
    import asyncio
    from urllib.parse import urlsplit

    from runtime.whatsapp.webhook import sign

    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port, parts.path
    n = max(1, int(round(rate * seconds)))
    loop = asyncio.get_running_loop()
    rows: list[tuple] = []

    async def one(i: int, due: float) -> None:
        c = i % customers
        wamid = f"wamid.bench.{run_id}.{i}"
        raw = json.dumps(text_body(wamid, customer_id(c), TEXTS[(i // customers) % len(TEXTS)], int(time.time()))).encode()
        signature = sign(raw, SECRET)
        sent = loop.time()
        try:
            status = await asyncio.wait_for(_post(host, port, path, raw, signature), timeout_s)
        except TimeoutError:
            status = -1  # no answer within timeout_s
        except (OSError, ValueError, IndexError):
            status = -2  # refused, reset, or not HTTP
        done = loop.time()
        rows.append((i, wamid, c, status, (done - due) * 1000, (done - sent) * 1000, (sent - due) * 1000,
                     sent - t0, done - t0))

    t0 = loop.time() + 0.2
    wall_t0 = time.time() + (t0 - loop.time())
    tasks = []
    ticker = None
    if os.environ.get("BENCH_PROGRESS"):
        async def progress():
            while True:
                await asyncio.sleep(5)
                print(f"[load {loop.time() - t0:5.1f}s] scheduled {len(tasks)} done {len(rows)} "
                      f"ok {sum(r[3] == 200 for r in rows)}", file=sys.stderr, flush=True)
        ticker = asyncio.create_task(progress())
    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    if ticker is not None:
        ticker.cancel()
    return {"rows": sorted(rows), "wall_t0": wall_t0, "wall_end": time.time()}


def _load_in_child(conn, kwargs: dict) -> None:
    import asyncio

    try:
        conn.send(asyncio.run(_load(**kwargs)))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent)
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_load(url: str, customers: int, rate: float, seconds: float, run_id: str, *, timeout_s: float = 30.0,
             in_process: bool = False) -> dict:
    """Run the load generator (in a spawned process by default) and return its per-post rows."""
    kwargs = dict(url=url, customers=customers, rate=rate, seconds=seconds, run_id=run_id, timeout_s=timeout_s)
    if in_process:  # shares the server's GIL: only for comparison
        import asyncio

        box: dict = {}
        t = threading.Thread(target=lambda: box.update(asyncio.run(_load(**kwargs))), name="bench-load", daemon=True)
        t.start()
        t.join(seconds + timeout_s + 120)
        if t.is_alive() or "rows" not in box:
            raise RuntimeError("the in-process load generator did not finish")
        return box
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load_in_child, args=(child, kwargs), name="bench-load", daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(seconds + timeout_s + 120):
            raise RuntimeError("the load generator did not finish in time")
        try:
            result = parent.recv()
        except EOFError:
            raise RuntimeError(f"the load generator died (exit code {proc.exitcode})") from None
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if "error" in result:
        raise RuntimeError(f"load generator failed: {result['error']}")
    return result


# --------------------------------------------------------------------------------------- the server


class _Server:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a background thread."""

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


class _QueueWatch:
    """huey signal counters per task name (executions, errors, time) and a 1 s sampler of the backlog."""

    def __init__(self, huey) -> None:
        from huey import signals as S

        self.huey, self._lock = huey, threading.Lock()
        self.enqueued, self.executed, self.errors = collections.Counter(), collections.Counter(), collections.Counter()
        self.busy_s = collections.Counter()
        self.error_texts: collections.Counter = collections.Counter()
        self._started: dict[str, float] = {}
        self.samples: list[tuple[float, int, int, int]] = []  # (t, queued, scheduled, running)
        self._stop = threading.Event()
        self.S = S
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


# --------------------------------------------------------------------------------------- the benchmark


def run_benchmark(customers: int = 100, rate: float = 200.0, seconds: float = 30.0, llm_delay_s: float = 2.0,
                  workers: int = 32, database_url: str | None = None, redis_url: str | None = None, *,
                  debounce_s: float | None = None, drain_timeout_s: float = 120.0, load_in_process: bool = False,
                  quiet: bool = False) -> dict:
    """Serve the real app, post ``rate`` signed webhooks/s for ``seconds`` s, wait for the drain, check the
    database; prints (unless ``quiet``) and returns the figures. ``report["violation_count"]`` must be 0."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import httpx

    from atende.app import create_app
    from atende.services import build_services
    from core.settings import Settings
    from runtime.llm_provider import FixedChatModelProvider
    from runtime.whatsapp.standin import GraphStandIn

    if redis_url:
        _flush_redis(redis_url)
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
        watch = _QueueWatch(app.state.huey)
        try:
            with _Server(app) as base:
                with httpx.Client(base_url=base, trust_env=False, timeout=30,
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
                    admin.post("/api/assistants", json={"name": "bench"}).raise_for_status()
                    admin.post("/api/whatsapp/senders", json={
                        "assistant_id": "bench", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                        "access_token": "bench-token", "app_secret": SECRET, "verify_token": "bench-verify",
                    }).raise_for_status()
                watch.start()
                cpu0, host0 = time.process_time(), _host_cpu()
                load = run_load(f"{base}/webhooks/whatsapp", customers, rate, seconds, run_id, in_process=load_in_process)
                cpu1, host1 = time.process_time(), _host_cpu()
                drained, drain_s, last_state = _wait_drained(services, watch, drain_timeout_s)
                cpu2, host2 = time.process_time(), _host_cpu()
                report = _verify(services, graph, llm, watch, load, rate, seconds, customers, workers)
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
                    "host_busy_during_load": _busy(host0, host1), "host_busy_during_drain": _busy(host1, host2),
                }
        finally:
            watch.stop()
            services.engine.dispose()
            if redis_url:
                _flush_redis(redis_url)
    report["setup"] = {
        "database": "postgresql" if database_url and database_url.startswith("postgresql") else "sqlite",
        "queue": "redis" if redis_url else "sqlite (huey SqliteHuey)",
        "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.machine()}",
        "generator": "in-process thread" if load_in_process else "separate process",
        "debounce_s": settings.whatsapp_debounce_s, "workers": workers, "llm_delay_s": llm_delay_s,
    }
    if not quiet:
        _print(report)
    return report


def _host_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat (Linux); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _busy(a, b) -> float | None:
    """Share of the machine's CPU time that was busy between two ``_host_cpu`` readings (all processes)."""
    if a is None or b is None or b[1] == a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]), 2)


def _flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def _state(services, watch: _QueueWatch) -> dict:
    from sqlalchemy import func, select

    from runtime.models import Message
    from runtime.whatsapp.models import WebhookPost

    with services.session() as session:
        unprocessed = session.scalar(select(func.count()).select_from(WebhookPost).where(WebhookPost.processed.is_(False)))
        uncovered = session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "inbound", Message.status == "received"))
        unsent = session.scalar(select(func.count()).select_from(Message).where(
            Message.direction == "outbound", Message.status.in_(("answered", "pending"))))
    queued, scheduled = watch.counts()
    return {"unprocessed_posts": unprocessed, "uncovered_inbound": uncovered, "unsent_replies": unsent,
            "queued": queued, "scheduled": scheduled, "running": watch.running}


def _wait_drained(services, watch: _QueueWatch, timeout_s: float) -> tuple[bool, float, dict]:
    """Poll until nothing is left to do (twice in a row); bounded by ``timeout_s``."""
    t0 = time.monotonic()
    quiet_polls, state = 0, {}
    while time.monotonic() - t0 < timeout_s:
        try:
            state = _state(services, watch)
        except Exception as exc:  # noqa: BLE001 (a locked database: try again)
            state = {"error": str(exc)[:120]}
            quiet_polls = 0
        else:
            quiet_polls = quiet_polls + 1 if not any(state.values()) else 0
            if quiet_polls >= 2:
                return True, time.monotonic() - t0, state
        time.sleep(0.5)
    return False, time.monotonic() - t0, state


def _summary(values: list[float], digits: int = 1) -> dict:
    if not values:
        return {"n": 0}
    p50, p90, p99 = (float(v) for v in np.percentile(values, [50, 90, 99]))
    return {"n": len(values), "p50": round(p50, digits), "p90": round(p90, digits), "p99": round(p99, digits),
            "max": round(max(values), digits), "mean": round(statistics.fmean(values), digits)}


def _verify(services, graph, llm: SlowScriptedLLM, watch: _QueueWatch, load: dict, rate: float, seconds: float,
            customers: int, workers: int) -> dict:
    from sqlalchemy import func, select

    from runtime.models import Conversation, Message, MessagePart, Turn
    from runtime.whatsapp.models import WebhookPost
    from runtime.whatsapp.render import render_for_whatsapp
    from runtime.whatsapp.split import split_message

    rows = load["rows"]
    ok = [r for r in rows if r[3] == 200]
    statuses = collections.Counter(r[3] for r in rows)
    first_send, last_send, last_done = min(r[7] for r in rows), max(r[7] for r in rows), max(r[8] for r in rows)
    acks = {
        "posts": len(rows), "ok": len(ok), "non_200": len(rows) - len(ok),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "offered_per_s": round((len(rows) - 1) / max(last_send - first_send, 1e-9), 1),
        "acked_per_s": round(len(ok) / max(last_done - first_send, 1e-9), 1),
        "latency_from_schedule_ms": _summary([r[4] for r in rows]),
        "latency_from_send_ms": _summary([r[5] for r in rows]),
        "generator_lag_ms": _summary([r[6] for r in rows]),
    }
    # achieved rate per second of the run (acks completed in each 1 s bucket)
    buckets = collections.Counter(int(r[8]) for r in ok)
    acks["acked_per_s_by_second"] = [buckets.get(s, 0) for s in range(int(last_done) + 1)]

    wall_t0 = load["wall_t0"]
    with services.session() as session:
        convs = {c.id: c.customer_id for c in session.scalars(select(Conversation))}
        inbound = list(session.execute(select(Message.channel_message_id, Message.conversation_id, Message.turn_id,
                                              Message.status, Message.created_at).where(Message.direction == "inbound")))
        outbound = list(session.execute(select(Message.id, Message.turn_id, Message.status, Message.sent_at,
                                               Message.text).where(Message.direction == "outbound")))
        parts = collections.Counter(session.scalars(select(MessagePart.message_id)))
        parts_sent = session.scalar(select(func.count()).select_from(MessagePart).where(MessagePart.status == "sent"))
        turns = list(session.execute(select(Turn.id, Turn.conversation_id, Turn.status, Turn.started_at,
                                            Turn.finished_at, Turn.error)))
        posts = list(session.execute(select(WebhookPost.received_at, WebhookPost.body, WebhookPost.processed,
                                            WebhookPost.error)))

    violations: dict[str, int] = collections.Counter()
    examples: dict[str, str] = {}

    def violate(kind: str, example: str, n: int = 1) -> None:
        violations[kind] += n
        examples.setdefault(kind, example)

    # 1. each acknowledged wamid stored exactly once (and nothing else stored)
    stored = collections.Counter(m.channel_message_id for m in inbound)
    for r in ok:
        if stored[r[1]] == 0:
            violate("acked_not_stored", r[1])
    for wamid, n in stored.items():
        if n > 1:
            violate("stored_more_than_once", wamid, n - 1)
    posted = {r[1] for r in rows}
    for wamid in stored:
        if wamid not in posted:
            violate("stored_not_posted", wamid)
    for p in posts:
        if p.error:
            violate("post_processing_error", p.error[:160])
    # 2. every inbound message covered by exactly one turn (turn_id is a single column: one turn at most)
    turn_by_id = {t.id: t for t in turns}
    covered = collections.defaultdict(list)
    for m in inbound:
        if m.turn_id is None:
            violate("inbound_not_covered", m.channel_message_id)
        elif m.turn_id not in turn_by_id:
            violate("inbound_turn_missing", m.channel_message_id)
        else:
            covered[m.turn_id].append(m)
            if m.status != "answered":
                violate("inbound_not_answered", f"{m.channel_message_id} status {m.status}")
    # 3. each turn produced exactly one reply, sent in the parts it splits into
    expected_parts = len(split_message(render_for_whatsapp(REPLY)))
    replies = collections.defaultdict(list)
    for o in outbound:
        replies[o.turn_id].append(o)
    for t in turns:
        if t.status != "answered":
            violate(f"turn_{t.status}", f"{t.id}: {(t.error or '')[:160]}")
        if not covered.get(t.id):
            violate("turn_without_messages", t.id)
        n = len(replies.get(t.id, []))
        if n == 0:
            violate("turn_without_reply", t.id)
        elif n != 1:
            violate("turn_with_extra_replies", f"{t.id}: {n} outbound")
        elif parts[replies[t.id][0].id] != expected_parts:
            violate("reply_with_wrong_parts", f"{t.id}: {parts[replies[t.id][0].id]} parts")
    for turn_id, rs in replies.items():
        if turn_id is None or turn_id not in turn_by_id:
            violate("reply_without_turn", rs[0].id, len(rs))
    # 4. messages the stand-in received == parts with status sent; none sent twice
    with graph._lock:
        sent = list(graph.sent)
    by_callback = collections.Counter((s["json"] or {}).get("biz_opaque_callback_data") for s in sent)
    if len(sent) != parts_sent:
        violate("standin_vs_sent_mismatch", f"stand-in got {len(sent)}, {parts_sent} parts sent",
                abs(len(sent) - parts_sent))
    for cb, n in by_callback.items():
        if n > 1:
            violate("reply_sent_twice", str(cb), n - 1)
    for o in outbound:
        if o.status != "sent":
            violate(f"outbound_{o.status}", o.id)

    # debounce: turns per customer, messages per turn, turns that started before their burst was quiet
    debounce = services.settings.whatsapp_debounce_s
    per_conv = collections.defaultdict(list)
    for t in turns:
        per_conv[t.conversation_id].append(t)
    premature, split_bursts = 0, 0
    for conv_turns in per_conv.values():
        conv_turns.sort(key=lambda t: t.started_at)
        prev_last = None
        for t in conv_turns:
            msgs = covered.get(t.id, [])
            if not msgs:
                continue
            newest, oldest = max(m.created_at for m in msgs), min(m.created_at for m in msgs)
            if (t.started_at - newest).total_seconds() < debounce - 0.05:
                premature += 1
            if prev_last is not None and (oldest - prev_last).total_seconds() < debounce:
                split_bursts += 1
            prev_last = newest
    turns_per_customer = collections.Counter(convs[t.conversation_id] for t in turns)

    # where the time went (from the database timestamps)
    received = {}
    for p in posts:
        try:
            wamid = p.body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        except (KeyError, IndexError, TypeError):
            continue
        received[wamid] = p.received_at
    store_lag = [(m.created_at - received[m.channel_message_id]).total_seconds() * 1000
                 for m in inbound if m.channel_message_id in received]
    turn_wait, send_lag, end_to_end = [], [], []
    for t in turns:
        msgs = covered.get(t.id, [])
        if msgs:
            turn_wait.append((t.started_at - max(m.created_at for m in msgs)).total_seconds())
        for o in replies.get(t.id, []):
            if o.sent_at and t.finished_at:
                send_lag.append((o.sent_at - t.finished_at).total_seconds() * 1000)
            if o.sent_at and msgs:
                last = max(msgs, key=lambda m: m.created_at)
                if last.channel_message_id in received:
                    end_to_end.append((o.sent_at - received[last.channel_message_id]).total_seconds())
    last_reply = max((o.sent_at for o in outbound if o.sent_at), default=None)

    peak = max(watch.samples, key=lambda s: s[1] + s[2], default=(0, 0, 0, 0))
    report = {
        "target_rate": rate, "seconds": seconds, "customers": customers, "acks": acks,
        "messages_stored": len(inbound), "conversations": len(convs), "turns": len(turns),
        "turn_statuses": dict(collections.Counter(t.status for t in turns)),
        "replies_sent_to_standin": len(sent), "outbound_sent": parts_sent,
        "outbound_statuses": dict(collections.Counter(o.status for o in outbound)),
        "messages_per_turn": _summary([len(covered[t.id]) for t in turns if covered.get(t.id)]),
        "turns_per_customer": _summary(list(turns_per_customer.values())),
        "debounce": {"premature_turns": premature, "bursts_split": split_bursts},
        "timings": {
            "stored_after_ack_ms": _summary(store_lag),
            "turn_start_after_newest_message_s": _summary(turn_wait, 2),
            "reply_sent_after_turn_ms": _summary(send_lag),
            "reply_after_last_message_acked_s": _summary(end_to_end, 2),
            "last_reply_after_load_start_s": round(last_reply.timestamp() - wall_t0, 1) if last_reply else None,
        },
        "llm": {"calls": llm.calls, "max_concurrent": llm.max_in_flight},
        "queue": {
            "enqueued": dict(watch.enqueued), "executed": dict(watch.executed), "errors": dict(watch.errors),
            "busy_s": {k: round(v, 1) for k, v in watch.busy_s.items()},
            "turn_jobs_per_turn": round(watch.executed.get("whatsapp.turn", 0) / max(len(turns), 1), 1),
            "peak_backlog": {"at_s": round(peak[0], 1), "queued": peak[1], "scheduled": peak[2], "running": peak[3]},
            "error_samples": dict(watch.error_texts.most_common(3)),
            # (seconds since the load started, queued, scheduled, running) every 5 s
            "timeline": [(round(t), q, sc, r) for t, q, sc, r in watch.samples[4::5]],
        },
        "violations": dict(violations), "violation_examples": examples,
    }
    report["violation_count"] = sum(violations.values())
    return report


def _print(report: dict) -> None:
    s, a = report["setup"], report["acks"]
    lat, snd = a["latency_from_schedule_ms"], a["latency_from_send_ms"]
    print(f"\nwhatsapp load benchmark: {report['customers']} customers, target {report['target_rate']:g} posts/s "
          f"for {report['seconds']:g} s, LLM {s['llm_delay_s']:g} s/reply, {s['workers']} workers, debounce {s['debounce_s']:g} s")
    print(f"  machine  {s['machine']}   database {s['database']}   queue {s['queue']}   load generator: {s['generator']}")
    print(f"  rate     target {report['target_rate']:g}/s   offered {a['offered_per_s']}/s   acknowledged {a['acked_per_s']}/s "
          f"({a['ok']} of {a['posts']} posts 200, non-200 {a['non_200']}: {a['statuses']})")
    print(f"  ack      from scheduled time p50 {lat.get('p50')} ms  p99 {lat.get('p99')} ms  max {lat.get('max')} ms"
          f"   (from send: p50 {snd.get('p50')}  p99 {snd.get('p99')}  max {snd.get('max')} ms;"
          f" generator lag p99 {a['generator_lag_ms'].get('p99')} ms)")
    print(f"  acks/s   per second of the run: {a['acked_per_s_by_second']}")
    mpt, tpc = report["messages_per_turn"], report["turns_per_customer"]
    print(f"  stored   {report['messages_stored']} messages in {report['conversations']} conversations; "
          f"{report['turns']} turns {report['turn_statuses']}; replies sent to the stand-in {report['replies_sent_to_standin']}"
          f" (outbound {report['outbound_statuses']})")
    print(f"  debounce messages/turn p50 {mpt.get('p50')} max {mpt.get('max')}   turns/customer p50 {tpc.get('p50')} "
          f"max {tpc.get('max')}   premature turns {report['debounce']['premature_turns']}   "
          f"bursts split {report['debounce']['bursts_split']}")
    t = report["timings"]
    print(f"  lags     stored after ack p50 {t['stored_after_ack_ms'].get('p50')} ms p99 {t['stored_after_ack_ms'].get('p99')} ms;"
          f" turn start after newest msg p50 {t['turn_start_after_newest_message_s'].get('p50')} s"
          f" max {t['turn_start_after_newest_message_s'].get('max')} s;"
          f" reply after last msg p50 {t['reply_after_last_message_acked_s'].get('p50')} s"
          f" max {t['reply_after_last_message_acked_s'].get('max')} s")
    q = report["queue"]
    print(f"  queue    executed {q['executed']}  errors {q['errors']}  turn jobs per turn {q['turn_jobs_per_turn']}"
          f"  peak backlog {q['peak_backlog']}  LLM calls {report['llm']['calls']} (max {report['llm']['max_concurrent']} at once)")
    print(f"  backlog  (s, queued, scheduled, running) every 5 s: {q['timeline']}")
    if q["error_samples"]:
        print(f"  errors   {q['error_samples']}")
    print(f"  drain    {'drained' if report['drained'] else 'NOT drained'} in {report['drain_s']} s after the load"
          f" (bound {report['drain_timeout_s']:g} s; state {report['state_at_end']})")
    c = report.get("cpu", {})
    print(f"  cpu      server process {c.get('server_cores_during_load')} cores during the load, "
          f"{c.get('server_cores_during_drain')} during the drain, {c.get('server_cpu_ms_per_post')} ms per post; "
          f"whole machine busy {c.get('host_busy_during_load')} / {c.get('host_busy_during_drain')} (other processes included)")
    print(f"  invariant violations: {report['violation_count']}"
          + (f"  {report['violations']}  e.g. {report['violation_examples']}" if report["violation_count"] else ""))


def _throwaway_postgres(admin_url: str):
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


def main(argv: list[str] | None = None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    p = argparse.ArgumentParser(prog="python -m atende.bench.whatsapp_load", description=__doc__.split("\n")[0])
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
        database_url, drop = _throwaway_postgres(args.postgres)
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
