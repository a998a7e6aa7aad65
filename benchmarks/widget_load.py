"""Widget load benchmark: how fast the WhatsApp webhook is acknowledged while anonymous widget visitors chat.

One run, against the real app served by uvicorn on 127.0.0.1 (in a thread of this process, with the
embedded huey consumer processing the webhooks and WhatsApp turns, replies sent to the local Graph
stand-in). The chat model is a slow OpenAI-compatible stand-in at the HTTP boundary, in a child process:
every completion sleeps ``llm_delay_s`` (configured as ``ATENDE_LLM_BASE_URL`` would be), so the real
``openai`` client and turn engine run.

A load generator in another spawned process (plain asyncio HTTP/1.1, one connection per request, so it
shares no GIL with the server) posts signed text webhooks open-loop at ``webhook_rate``/s for the whole
run and measures each acknowledgement (POST -> 200). For the first ``baseline_s`` seconds nothing else
happens; then ``visitors`` anonymous widget visitors (each from its own address, sent as
``X-Forwarded-For`` from loopback, which uvicorn trusts by default) start at once: each mints a session and
sends messages one after the other for ``load_s`` seconds, polling every second for the reply and waiting
``Retry-After`` when refused (429 / 503). Printed: the webhook's p50/p99 acknowledgement latency without
and with the widget load and their ratio; what the visitors got (status counts, replies, reply latency);
how many acknowledgements completed while widget turns were in flight; the most completions the model
stand-in served at once.

Run: ``python -m benchmarks.widget_load`` (defaults: 100 visitors, 15 s baseline, 30 s load, webhooks 4/s,
LLM 2 s per reply, the settings' widget pool: ``widget_turn_workers`` 4, ``widget_max_turns`` 32).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

from atende.bench.whatsapp_load.harness import BackgroundServer
from atende.bench.whatsapp_load.payloads import ADMIN_TOKEN, PHONE_ID, SECRET, customer_id, text_body
from atende.bench.whatsapp_load.verify import summarize

WIDGET_ASSISTANT = "bench-widget"
QUESTIONS = ["Qual o horário?", "Vocês atendem sábado?", "Quanto custa a limpeza?", "Onde fica?"]


# --------------------------------------------------------------------------------------- the chat model stand-in


def _serve_llm(conn, delay_s: float) -> None:
    """Child process: an OpenAI-compatible chat endpoint whose every completion takes ``delay_s``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock, stats = threading.Lock(), {"calls": 0, "in_flight": 0, "max_in_flight": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (stdlib name); /stats
            with lock:
                self._send(dict(stats))

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                stats["calls"] += 1
                stats["in_flight"] += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
            time.sleep(delay_s)
            with lock:
                stats["in_flight"] -= 1
            self._send({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-standin",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "Atendemos de segunda a sexta, das 9h às 18h."}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30},
            })

        def log_message(self, fmt: str, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    conn.send(server.server_address[1])
    server.serve_forever()


class SlowLLMStandIn:
    """The stand-in in a spawned process; ``base_url`` is what ``ATENDE_LLM_BASE_URL`` would be."""

    def __init__(self, delay_s: float) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_serve_llm, args=(child, delay_s), name="bench-llm", daemon=True)
        self.proc.start()
        if not parent.poll(60):
            self.proc.terminate()
            raise RuntimeError("the chat model stand-in did not start")
        self.base_url = f"http://127.0.0.1:{parent.recv()}/v1"

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.base_url.removesuffix("/v1") + "/stats", trust_env=False, timeout=10).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


# --------------------------------------------------------------------------------------- the load generator


async def _request(host: str, port: int, path: str, body: dict | bytes, headers: dict[str, str]
                   ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 POST on its own connection (``Connection: close``): (status, headers, body)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{head}"
                     f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode() + raw)
        await writer.drain()
        answer = await reader.read()  # until the server closes
    finally:
        writer.close()
    top, _, payload = answer.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        raise ConnectionResetError("closed without an answer")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in fields.items()}, payload


async def _load(host: str, port: int, visitors: int, baseline_s: float, load_s: float, webhook_rate: float,
                run_id: str, timeout_s: float) -> dict:
    from runtime.whatsapp.webhook import sign

    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2
    load_start, end = t0 + baseline_s, t0 + baseline_s + load_s
    acks: list[tuple[float, float, int]] = []  # webhook (sent, done, status), seconds since t0
    widget: collections.Counter = collections.Counter()  # (endpoint, status) -> count
    missing_retry_after = [0]
    in_flight: list[tuple[float, float]] = []  # (accepted, answered) of each widget message, since t0
    reply_s: list[float] = []

    async def call(path: str, body, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        try:
            return await asyncio.wait_for(_request(host, port, path, body, headers), timeout_s)
        except TimeoutError:
            return -1, {}, b""  # no answer within timeout_s: a hang
        except (OSError, ValueError, IndexError):
            return -2, {}, b""  # refused, reset, or not HTTP

    async def webhook(i: int, due: float) -> None:
        raw = json.dumps(text_body(f"wamid.wbench.{run_id}.{i}", customer_id(i % 20), "Oi", int(time.time()))).encode()
        signature = sign(raw, SECRET)
        status, _, _ = await call("/webhooks/whatsapp", raw, {"X-Hub-Signature-256": signature})
        acks.append((due - t0, loop.time() - t0, status))  # latency from the scheduled time: stalls are not hidden

    async def webhooks() -> None:
        tasks, i = [], 0
        while (due := t0 + i / webhook_rate) < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(webhook(i, due)))
            i += 1
        await asyncio.gather(*tasks)

    async def refused(status: int, headers: dict) -> None:
        """Wait out a 429/503 (its Retry-After, within the run); anything else but a hang waits a second."""
        wait = headers.get("retry-after")
        if status in (429, 503) and wait is None:
            missing_retry_after[0] += 1
        await asyncio.sleep(min(float(wait or 1), max(0.0, end - loop.time())))

    async def visitor(v: int) -> None:
        base = f"/api/widget/{WIDGET_ASSISTANT}"
        client = {"X-Forwarded-For": f"2001:db8::{v + 1:x}"}  # its own address (documentation range)
        token = None
        while token is None and loop.time() < end:
            status, headers, body = await call(f"{base}/session", {}, client)
            widget["session", status] += 1
            if status == 200:
                token = json.loads(body)["token"]
            else:
                await refused(status, headers)
        n = 0
        while token is not None and loop.time() < end:
            status, headers, body = await call(f"{base}/messages", {"token": token, "message": QUESTIONS[n % 4]}, client)
            widget["message", status] += 1
            if status != 202:
                await refused(status, headers)
                continue
            n += 1
            accepted, message_id = loop.time(), json.loads(body)["message_id"]
            answered = None
            while loop.time() < end + timeout_s:
                await asyncio.sleep(1.0)
                status, headers, body = await call(f"{base}/messages/{message_id}/reply", {"token": token}, client)
                widget["reply", status] += 1
                if status == 200 and json.loads(body)["status"] != "pending":
                    answered = loop.time()
                    reply_s.append(answered - accepted)
                    break
            in_flight.append((accepted - t0, (answered or loop.time()) - t0))
            if answered is None:
                break

    async def visitors_after_baseline() -> None:
        await asyncio.sleep(max(0.0, load_start - loop.time()))
        await asyncio.gather(*(visitor(v) for v in range(visitors)))

    await asyncio.gather(webhooks(), visitors_after_baseline())
    return {"acks": acks, "widget": {f"{k[0]} {k[1]}": n for k, n in sorted(widget.items())},
            "missing_retry_after": missing_retry_after[0], "in_flight": in_flight, "reply_s": reply_s,
            "baseline_s": baseline_s}


def _load_in_child(conn, kwargs: dict) -> None:
    try:
        conn.send(asyncio.run(_load(**kwargs)))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent)
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_load(**kwargs) -> dict:
    """Run ``_load`` in a spawned process (its own GIL) and return what it measured."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load_in_child, args=(child, kwargs), name="bench-widget-load", daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(kwargs["baseline_s"] + kwargs["load_s"] + 2 * kwargs["timeout_s"] + 60):
            raise RuntimeError("the load generator did not finish in time")
        result = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    if "error" in result:
        raise RuntimeError(f"load generator failed: {result['error']}")
    return result


# --------------------------------------------------------------------------------------- the benchmark


def run_benchmark(visitors: int = 100, baseline_s: float = 15.0, load_s: float = 30.0, webhook_rate: float = 4.0,
                  llm_delay_s: float = 2.0, whatsapp_workers: int = 8, widget_turn_workers: int | None = None,
                  widget_max_turns: int | None = None, timeout_s: float = 30.0, quiet: bool = False) -> dict:
    """Serve the real app, measure webhook acknowledgements without and then with widget load; returns
    (and unless ``quiet`` prints) the figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import httpx

    from atende.app import create_app
    from atende.services import build_services
    from core.settings import Settings
    from kb import registry
    from runtime.config import merge_config
    from runtime.whatsapp.standin import GraphStandIn

    pool = {k: v for k, v in (("widget_turn_workers", widget_turn_workers), ("widget_max_turns", widget_max_turns))
            if v is not None}
    llm = SlowLLMStandIn(llm_delay_s)
    try:
        with tempfile.TemporaryDirectory(prefix="atende-bench-widget-") as home, GraphStandIn() as graph:
            settings = Settings(home=Path(home), workers=whatsapp_workers, whatsapp_graph_url=graph.base_url,
                                admin_token=ADMIN_TOKEN, secret_key="bench-widget-secret", llm_base_url=llm.base_url,
                                llm_model="bench-standin", **pool)
            services = build_services(settings)
            services.embedders.get(settings.embedding_model).embed_query("aquecimento")  # loaded before the clock runs
            with services.session() as session:
                for name in ("bench", WIDGET_ASSISTANT):
                    a = registry.create_assistant(session, name=name, embedding_model=settings.embedding_model,
                                                  chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap)
                    # the per-assistant widget limits are lifted, so the server's turn cap is what bounds them
                    a.config = merge_config({}, {"widget": {"assistant_messages_per_minute": 100_000,
                                                            "assistant_sessions_per_hour": 1_000_000}})
                session.commit()
            app = create_app(services=services)
            try:
                with BackgroundServer(app) as base:
                    with httpx.Client(base_url=base, trust_env=False, timeout=30,
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
                        admin.post("/api/whatsapp/senders", json={
                            "assistant_id": "bench", "phone_number_id": PHONE_ID, "display_phone_number": "15550001111",
                            "access_token": "bench-token", "app_secret": SECRET, "verify_token": "bench-verify",
                        }).raise_for_status()
                    port = int(base.rsplit(":", 1)[1])
                    load = run_load(host="127.0.0.1", port=port, visitors=visitors, baseline_s=baseline_s,
                                    load_s=load_s, webhook_rate=webhook_rate, run_id=uuid.uuid4().hex[:8],
                                    timeout_s=timeout_s)
                    llm_stats = llm.stats()
            finally:
                services.engine.dispose()
    finally:
        llm.close()
    report = _report(load, llm_stats)
    report["setup"] = {
        "visitors": visitors, "baseline_s": baseline_s, "load_s": load_s, "webhook_rate": webhook_rate,
        "llm_delay_s": llm_delay_s, "whatsapp_workers": whatsapp_workers,
        "widget_turn_workers": settings.widget_turn_workers, "widget_max_turns": settings.widget_max_turns,
        "machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.machine()}",
    }
    if not quiet:
        _print(report)
    return report


def _report(load: dict, llm_stats: dict) -> dict:
    """Acknowledgement latencies per phase, their ratio, and what the widget visitors got."""
    split = load["baseline_s"]
    latency = {"baseline": [], "under_widget_load": []}
    statuses = collections.Counter()
    for due, done, status in load["acks"]:
        statuses[status] += 1
        if status == 200:
            latency["baseline" if due < split else "under_widget_load"].append((done - due) * 1000)
    spans = load["in_flight"]
    during_turns = sum(1 for due, done, status in load["acks"]
                       if status == 200 and any(a <= due and done <= b for a, b in spans))
    figures = {phase: summarize(values) for phase, values in latency.items()}
    base, loaded = figures["baseline"], figures["under_widget_load"]
    ratio = {p: round(loaded[p] / base[p], 2) if base.get(p) and loaded.get(p) is not None else None
             for p in ("p50", "p99")}
    return {"webhook_ack_ms": figures, "ratio": ratio, "webhook_statuses": dict(statuses),
            "acked_while_widget_turns_in_flight": during_turns,
            "widget": {"statuses": load["widget"], "replies": len(load["reply_s"]),
                       "reply_after_accept_s": summarize(load["reply_s"], 2),
                       "refusals_without_retry_after": load["missing_retry_after"]},
            "llm": llm_stats}


def _print(report: dict) -> None:
    s, f, r = report["setup"], report["webhook_ack_ms"], report["ratio"]
    print(f"\nwidget load benchmark: {s['visitors']} anonymous widget visitors for {s['load_s']:g} s after a "
          f"{s['baseline_s']:g} s baseline; signed webhooks {s['webhook_rate']:g}/s throughout; LLM {s['llm_delay_s']:g} s "
          f"per reply (HTTP stand-in); widget pool {s['widget_turn_workers']} workers, cap {s['widget_max_turns']} turns; "
          f"{s['whatsapp_workers']} job workers; {s['machine']}")
    for phase, label in (("baseline", "no widget load"), ("under_widget_load", f"{s['visitors']} visitors")):
        x = f[phase]
        print(f"  webhook ack ({label:>14}): p50 {x.get('p50')} ms  p99 {x.get('p99')} ms  max {x.get('max')} ms  (n {x['n']})")
    print(f"  ratio (with / without):        p50 {r['p50']}x  p99 {r['p99']}x")
    print(f"  webhook statuses {report['webhook_statuses']}; acknowledged while widget turns were in flight: "
          f"{report['acked_while_widget_turns_in_flight']}")
    w = report["widget"]
    print(f"  widget   {w['statuses']}")
    print(f"           replies {w['replies']}, reply after accept {w['reply_after_accept_s']}; "
          f"429/503 without Retry-After: {w['refusals_without_retry_after']}")
    print(f"  llm      {report['llm']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.widget_load", description=__doc__.split("\n")[0])
    p.add_argument("--visitors", type=int, default=100)
    p.add_argument("--baseline", type=float, default=15.0, help="seconds of webhooks alone")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of webhooks with the widget load")
    p.add_argument("--webhook-rate", type=float, default=4.0)
    p.add_argument("--llm-delay", type=float, default=2.0)
    p.add_argument("--whatsapp-workers", type=int, default=8)
    p.add_argument("--widget-turn-workers", type=int, default=None)
    p.add_argument("--widget-max-turns", type=int, default=None)
    p.add_argument("--json", metavar="FILE", default=None)
    args = p.parse_args(argv)
    report = run_benchmark(visitors=args.visitors, baseline_s=args.baseline, load_s=args.seconds,
                           webhook_rate=args.webhook_rate, llm_delay_s=args.llm_delay,
                           whatsapp_workers=args.whatsapp_workers, widget_turn_workers=args.widget_turn_workers,
                           widget_max_turns=args.widget_max_turns)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
