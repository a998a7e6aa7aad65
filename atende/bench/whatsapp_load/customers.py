"""The customers' side, in a process of its own: their phones (the Graph API stand-in the app sends replies to)
and what they post (signed text webhooks), open-loop for ``ingest_load`` or closed-loop for ``replay``.

The stand-in lives in this process, not the server's, so a customer sees its reply arrive the moment the app
sends it (no polling) and neither the stand-in's threads nor the generator share the server's GIL. Every
request the stand-in gets is recorded with its wall-clock arrival (``time.time()``; the server's process reads
the same clock).

- open loop (:func:`open_loop`): post ``i`` is due at ``t0 + i / rate`` whatever happened to the earlier ones,
  from customer ``i % customers``, until the parent sets the stop event; its text ends with ``(ref i)`` so that
  a model call can be told which message it answers (``stack.CallLog``).
- closed loop (:func:`replay`): each conversation is a customer who posts its next user turn once the whole
  previous reply has arrived (every part: the part's message and its number of parts are read from the
  database), and stops when its conversation was handed off to a person (the AI no longer answers it then).

:class:`Customers` runs the process: ``with`` starts it and gives the stand-in's URL (the app's
``whatsapp_graph_url``); ``start`` sends it the load, ``stop`` ends an open loop, ``result`` waits for the
posts' rows, ``sent`` (after the drain) returns what the stand-in received and stops it.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from atende.bench.whatsapp_load.load import Ack, post_status
from atende.bench.whatsapp_load.payloads import SECRET, customer_id, text_body
from runtime.whatsapp.standin import GraphStandIn
from runtime.whatsapp.webhook import sign

# what customers ask in the open loop (each message gets " (ref i)"): questions, so every turn searches the
# knowledge base and asks the model (a bare greeting or thanks is answered without either); post i asks
# QUESTIONS[i % len(QUESTIONS)], so every stretch of the run has the same mix. All in Portuguese, the scripted
# model's language: a reply in another language than the customer's is rejected and asked again (a second
# model call, which would hold a worker twice as long and change the load between phases)
QUESTIONS = ["Qual o horário de atendimento?", "Quanto custa a limpeza?", "Vocês atendem sábado?",
             "Onde fica a loja?", "Qual é a política de reembolso?", "Como eu troco a minha senha?",
             "Como faço para cancelar o pedido?", "Os consertos têm garantia?"]


def marked(text: str, i: int) -> str:
    """``text`` with the marker of post ``i`` (read back by ``stack.CallLog.MARKER``)."""
    return f"{text} (ref {i})"


def signed(wamid: str, customer: str, text: str) -> tuple[bytes, dict[str, str]]:
    """The webhook body of one text message and its headers, signed as Meta signs it."""
    raw = json.dumps(text_body(wamid, customer, text, int(time.time()))).encode()
    return raw, {"Content-Type": "application/json", "User-Agent": "facebookexternalua",
                 "X-Hub-Signature-256": sign(raw, SECRET)}


class Phones(GraphStandIn):
    """The Graph API stand-in, recording each request's wall-clock arrival (``wall``) and telling
    ``on_message(payload, wall)`` (called in the stand-in's thread) about each one but read receipts (kept apart in
    ``.receipts``, as the base stand-in does)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_message: Callable[[dict, float], None] | None = None

    def _record(self, method: str, path: str, headers: dict, body: bytes, peer: tuple) -> tuple[dict | None, bool]:
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        receipt = isinstance(payload, dict) and payload.get("status") == "read"  # read and typing: not a reply
        wall = time.time()
        with self._lock:
            (self.receipts if receipt else self.sent).append(
                {"method": method, "path": path, "json": payload, "wall": wall, "at": time.monotonic()})
        callback = self.on_message
        if callback is not None and isinstance(payload, dict) and not receipt:
            callback(payload, wall)
        return payload, receipt

    def records(self) -> list[dict]:
        with self._lock:
            return list(self.sent)


async def open_loop(url: str, customers: int, rate: float, run_id: str, stop, timeout_s: float = 30.0) -> dict:
    """Post at ``rate``/s from ``customers`` customers until ``stop`` (an event) is set; the ``Ack`` rows (sorted)
    and the wall clock of the start and end. Post ``i``: wamid ``wamid.bench.<run_id>.<i>``, the text
    ``QUESTIONS[i % len(QUESTIONS)]`` marked with ``(ref i)``."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    loop = asyncio.get_running_loop()
    rows: list[Ack] = []
    tasks: list[asyncio.Task] = []

    async def one(i: int, due: float) -> None:
        wamid = f"wamid.bench.{run_id}.{i}"
        raw, headers = signed(wamid, customer_id(i % customers), marked(QUESTIONS[i % len(QUESTIONS)], i))
        sent = loop.time()
        status = await post_status(host, port, path, raw, headers, timeout_s)
        done = loop.time()
        rows.append(Ack(i, wamid, i % customers, status, (done - due) * 1000, (done - sent) * 1000,
                        (sent - due) * 1000, sent - t0, done - t0))

    t0 = loop.time() + 0.2
    wall_t0 = time.time() + (t0 - loop.time())
    i = 0
    while not stop.is_set():
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if stop.is_set():
            break
        tasks.append(asyncio.create_task(one(i, due)))
        i += 1
    await asyncio.gather(*tasks)
    return {"rows": sorted(rows), "wall_t0": wall_t0, "wall_end": time.time()}


def _part_lookup(database_url: str) -> Callable[[str], tuple[int, int, str] | None]:
    """A function of a part id (the send's ``biz_opaque_callback_data``): (its position, the number of parts of
    its message, its conversation's handoff state), read from the app's database."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url, pool_size=4, max_overflow=0) if database_url.startswith("postgresql") \
        else sa.create_engine(database_url)
    query = sa.text(
        "SELECT p.position, (SELECT count(*) FROM message_parts q WHERE q.message_id = p.message_id), c.handoff_state"
        " FROM message_parts p JOIN messages m ON m.id = p.message_id JOIN conversations c ON c.id = m.conversation_id"
        " WHERE p.id = :id")

    def lookup(part_id: str) -> tuple[int, int, str] | None:
        with engine.connect() as conn:
            row = conn.execute(query, {"id": part_id}).first()
        return (int(row[0]), int(row[1]), str(row[2])) if row else None

    return lookup


async def replay(phones: Phones, url: str, conversations: list[dict], run_id: str, database_url: str,
                 ramp_s: float = 10.0, reply_timeout_s: float = 900.0, timeout_s: float = 60.0) -> dict:
    """Replay ``conversations`` (each ``{"source", "texts"}``: its user turns), conversation ``k`` as customer
    ``customer_id(k)``, all at once (their starts spread over ``ramp_s``), closed-loop. Returns the ``Ack`` rows,
    one row per answered turn (times in wall-clock seconds), the handoffs, the posts left unanswered, and the
    replay's wall clock."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    loop = asyncio.get_running_loop()
    inbox: dict[str, asyncio.Queue] = {customer_id(k): asyncio.Queue() for k in range(len(conversations))}
    stray: list[dict] = []

    def deliver(payload: dict, wall: float) -> None:
        q = inbox.get(str(payload.get("to")))
        if q is None:
            stray.append(payload)
        else:
            q.put_nowait((wall, payload.get("biz_opaque_callback_data")))

    def on_message(payload: dict, wall: float) -> None:  # in the stand-in's thread
        loop.call_soon_threadsafe(deliver, payload, wall)

    phones.on_message = on_message
    lookup = _part_lookup(database_url)
    executor = ThreadPoolExecutor(4, thread_name_prefix="replay-db")
    rows: list[Ack] = []
    turns: list[dict] = []
    handoffs: list[dict] = []
    unanswered: list[dict] = []
    counter = iter(range(10**9))
    wall_t0 = time.time()

    async def conversation(k: int, conv: dict) -> None:
        await asyncio.sleep(k * ramp_s / max(len(conversations), 1))
        customer, q = customer_id(k), inbox[customer_id(k)]
        for j, text in enumerate(conv["texts"]):
            i = next(counter)
            wamid = f"wamid.replay.{run_id}.{k}.{j}"
            raw, headers = signed(wamid, customer, text)
            sent = time.time()
            status = await post_status(host, port, path, raw, headers, timeout_s)
            acked = time.time()
            rows.append(Ack(i, wamid, k, status, (acked - sent) * 1000, (acked - sent) * 1000, 0.0,
                            sent - wall_t0, acked - wall_t0))
            if status != 200:
                unanswered.append({"conversation": k, "turn": j, "why": f"HTTP {status}"})
                return
            seen, state, reply_at = 0, "ai", 0.0
            while True:
                try:
                    reply_at, part_id = await asyncio.wait_for(q.get(), reply_timeout_s)
                except TimeoutError:
                    unanswered.append({"conversation": k, "turn": j, "why": f"no reply in {reply_timeout_s:g} s",
                                       "text": text[:200]})
                    return
                found = await loop.run_in_executor(executor, lookup, str(part_id))
                seen += 1
                if found is None:  # not a part of ours: counted by the checks (stand-in vs parts sent)
                    continue
                _, count, state = found
                if seen >= count:
                    break
            turns.append({"conversation": k, "turn": j, "sent": sent, "acked": acked, "reply": reply_at, "parts": seen})
            if state != "ai":  # handed off to a person: the AI answers no more, the customer stops here
                handoffs.append({"conversation": k, "source": conv["source"], "turn": j, "text": text,
                                 "earlier": conv["texts"][max(0, j - 2):j], "state": state})
                return

    await asyncio.gather(*(conversation(k, c) for k, c in enumerate(conversations)))
    executor.shutdown(wait=False)
    phones.on_message = None
    return {"rows": sorted(rows), "turns": turns, "handoffs": handoffs, "unanswered": unanswered,
            "stray": len(stray), "wall_t0": wall_t0, "wall_end": time.time()}


def _child(conn, stop) -> None:
    """The customers' process: the phones, then one load as the parent says, then the phones' records."""
    phones = Phones()
    phones.start()
    try:
        conn.send({"graph_url": phones.base_url})
        command = conn.recv()
        try:
            if command["mode"] == "open":
                result = asyncio.run(open_loop(stop=stop, **command["kwargs"]))
            else:
                result = asyncio.run(replay(phones, **command["kwargs"]))
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(result)
        if conn.recv() == "close":
            conn.send({"sent": phones.records()})
    except (EOFError, OSError):  # the parent went away (it failed, or did not ask for the records)
        pass
    finally:
        phones.stop()
        conn.close()


class Customers:
    """The customers' process (see the module's docstring); a context manager giving the stand-in's URL."""

    def __init__(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_child, args=(child, self._stop), name="bench-customers", daemon=True)
        self._child_conn = child
        self.graph_url = ""

    def __enter__(self) -> Customers:
        self._proc.start()
        self._child_conn.close()
        if not self._conn.poll(120):
            raise RuntimeError("the customers' process did not start")
        self.graph_url = self._conn.recv()["graph_url"]
        return self

    def start(self, mode: str, **kwargs) -> None:
        """``mode="open"``: ``open_loop(**kwargs)``; ``mode="replay"``: ``replay(**kwargs)``."""
        self._conn.send({"mode": mode, "kwargs": kwargs})

    def stop(self) -> None:
        """End the open loop (the posts already due still complete)."""
        self._stop.set()

    def result(self, timeout_s: float) -> dict:
        """The load's result (waits up to ``timeout_s``)."""
        if not self._conn.poll(timeout_s):
            raise RuntimeError(f"the customers' load did not finish in {timeout_s:g} s")
        try:
            result = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the customers' process died (exit code {self._proc.exitcode})") from None
        if "error" in result:
            raise RuntimeError(f"the customers' load failed: {result['error']}")
        return result

    def sent(self) -> list[dict]:
        """What the stand-in received (each ``{"json", "wall", ...}``); the stand-in stops after."""
        self._conn.send("close")
        if not self._conn.poll(60):
            raise RuntimeError("the customers' process did not send its records")
        return self._conn.recv()["sent"]

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._conn.close()  # a child still waiting for a word from here stops
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)

