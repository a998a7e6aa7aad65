"""The load generator: signed webhook posts, open-loop at a fixed rate, each timed; in a process of its own.

Post ``i`` is due at ``t0 + i / rate`` and runs as its own task, whatever happened to the earlier ones. The
generator runs in a spawned process so that it does not share the server's GIL; ``in_process`` runs it in a
thread of the server's process, for comparison.

Each post is a plain asyncio HTTP/1.1 exchange on its own connection, not httpx: httpx's connection pool
(httpcore 1.0.9) scans its connections and waiting requests on every request and release, and once the
server falls behind (what this benchmark is for) there are hundreds of them. Measured 2026-11-30 on the
2 shared cores, 200 posts/s: against a stand-in answering every post in exactly 2.00 s, this client spent
1.1-1.5 ms of CPU per post and reported p50 2003 ms, p99 2006-2027 ms; an ``httpx.AsyncClient`` (pool
uncapped, 20 kept alive) spent 3.7-4.4 ms, lagged its schedule by 0.08-1.4 s at p99 and reported
p50 2.1-4.6 s, p99 2.3-6.6 s (a pool capped at 100: 31-35 ms per post, p50 24-25 s). Against the real app
(``--rate 200 --seconds 5``, which falls behind on 2 cores) this client offered 199.6-199.9 posts/s with a
p99 lag of 7.5-9 ms, httpx 164-180 posts/s with 0.4-1.1 s.
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from atende.bench.whatsapp_load.payloads import numbered_post


class Ack(NamedTuple):
    """One post and its answer; times in ms, ``sent_s``/``done_s`` in seconds since the load started."""

    i: int
    wamid: str
    customer: int
    status: int  # the HTTP status; -1: no answer within timeout_s; -2: refused, reset or not HTTP
    from_schedule_ms: float
    from_send_ms: float
    lag_ms: float  # how late the generator sent it
    sent_s: float
    done_s: float


async def _post(host: str, port: int, path: str, raw: bytes, headers: dict[str, str]) -> int:
    """One HTTP/1.1 POST on its own connection (``Connection: close``); returns the status code."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{lines}"
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

async def post_status(host: str, port: int, path: str, raw: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """:func:`_post` bounded by ``timeout_s``: the status code, -1 on a timeout, -2 when the connection failed."""
    try:
        return await asyncio.wait_for(_post(host, port, path, raw, headers), timeout_s)
    except TimeoutError:
        return -1
    except (OSError, ValueError, IndexError):
        return -2


async def _load(url: str, customers: int, rate: float, seconds: float, run_id: str, timeout_s: float) -> dict:
    """Post ``rate * seconds`` webhooks to ``url``; returns the sorted ``Ack`` rows and the run's wall clock."""
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port, parts.path
    n = max(1, int(round(rate * seconds)))
    loop = asyncio.get_running_loop()
    rows: list[Ack] = []
    tasks: list[asyncio.Task] = []

    async def one(i: int, due: float) -> None:
        wamid, raw, headers = numbered_post(i, customers, run_id)
        sent = loop.time()
        status = await post_status(host, port, path, raw, headers, timeout_s)
        done = loop.time()
        rows.append(Ack(i, wamid, i % customers, status, (done - due) * 1000, (done - sent) * 1000,
                        (sent - due) * 1000, sent - t0, done - t0))

    t0 = loop.time() + 0.2
    wall_t0 = time.time() + (t0 - loop.time())
    ticker = asyncio.create_task(_progress(loop, t0, tasks, rows)) if os.environ.get("BENCH_PROGRESS") else None
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


async def _progress(loop: asyncio.AbstractEventLoop, t0: float, tasks: list, rows: list[Ack]) -> None:
    while True:
        await asyncio.sleep(5)
        print(f"[load {loop.time() - t0:5.1f}s] scheduled {len(tasks)} done {len(rows)} "
              f"ok {sum(r.status == 200 for r in rows)}", file=sys.stderr, flush=True)


def _load_in_child(conn, kwargs: dict) -> None:
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
