"""Request bodies that never end, against a real server: for each public route, the status returned, the
bytes the client got into its socket before the server cut it off, and the server's memory (RSS) before,
at its peak during, and after the stream.

The server is a child process started like ``atende serve`` (uvicorn serving the real app on its own data
directory). Each client is a raw socket that goes on sending until the server closes the connection or the
whole body is sent, reading whatever the server answers meanwhile:

- ``declared``: ``Content-Length`` of the full size, the body sent at once;
- ``expect``: the same with ``Expect: 100-continue``: the body is sent only after ``100 Continue``;
- ``chunked``: no declared size (``Transfer-Encoding: chunked``).

Run: ``python -m benchmarks.body_limits [--mib 1024] [--modes declared,chunked,expect]``
"""
from __future__ import annotations

import argparse
import http.client
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
PIECE = 256 * 1024  # bytes handed to send() at a time
IDLE_S = 10.0  # a server that neither reads nor answers for this long has stalled the client
BOUNDARY = "atende-bench-boundary"
UPLOAD_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
               "Content-Type: text/plain\r\n\r\n").encode()


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    content_type: str
    prefix: bytes  # the start of a plausible body; the rest is filler


# every route that answers a client without credentials (or reads the body before checking them)
PUBLIC_ROUTES = [
    Route("webhook", "/webhooks/whatsapp", "application/json", b'{"object": "whatsapp_business_account", "x": "'),
    Route("api chat", "/api/chat", "application/json", b'{"customer_id": "c1", "message": "'),
    Route("upload", "/api/assistants/shop/documents", f"multipart/form-data; boundary={BOUNDARY}", UPLOAD_HEAD),
    Route("dashboard login", "/dashboard/login", "application/x-www-form-urlencoded", b"token="),
    Route("widget session", "/api/widget/shop/session", "application/json", b'{"visitor": "'),
    Route("widget message", "/api/widget/shop/messages", "application/json", b'{"text": "'),
    Route("widget feedback", "/api/widget/shop/messages/m1/feedback", "application/json", b'{"rating": "'),
    Route("widget history", "/api/widget/shop/history", "application/json", b'{"token": "'),
]


@dataclass
class StreamResult:
    status: int | None  # None: no answer (the connection was reset or stalled first)
    sent: int  # body bytes the client's socket accepted
    answer: bytes  # the final response as received (headers and body)
    stalled: bool = False


class ServerProcess:
    """``python -m atende.cli serve`` on a free loopback port, with its own data directory."""

    def __init__(self, home: Path, env: dict[str, str] | None = None):
        self.home, self.port = home, _free_port()
        self.log = open(home / "server.log", "wb")  # noqa: SIM115 (closed by stop())
        environ = {**os.environ, "HF_HUB_OFFLINE": "1", "ATENDE_HOME": str(home), **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "atende.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_healthy(timeout=120.0)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return process_rss(self.pid)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.home / 'server.log'}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not answer /healthz in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_rss(pid: int) -> int:
    """RSS of a process in bytes: psutil when installed, else /proc/<pid>/status."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None
    return psutil.Process(pid).memory_info().rss


def stream(port: int, route: Route, total: int, mode: str) -> StreamResult:
    """POST ``total`` body bytes to ``route`` in ``mode`` (declared | expect | chunked), never stopping early
    on our side: only the server closing the connection (or stalling it) ends the stream."""
    head = [f"POST {route.path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {route.content_type}"]
    head.append("Transfer-Encoding: chunked" if mode == "chunked" else f"Content-Length: {total}")
    if mode == "expect":
        head.append("Expect: 100-continue")
    sock = socket.create_connection(("127.0.0.1", port), timeout=IDLE_S)
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        received = bytearray()
        if mode == "expect":
            received += _read_head(sock)
            if not received.startswith(b"HTTP/1.1 100"):  # answered without asking for the body
                return StreamResult(_status(received), 0, _drain(sock, received))
            received.clear()
        sent, stalled = _pump(sock, _body(route.prefix, total, chunked=mode == "chunked"), received)
        answer = _drain(sock, received)
        return StreamResult(_status(answer), sent, answer, stalled)
    finally:
        sock.close()


def _body(prefix: bytes, total: int, chunked: bool):
    """The body's wire pieces: ``prefix`` then filler up to ``total`` bytes (framed when chunked)."""
    left, first = total, True
    filler = b"x" * PIECE
    while left > 0:
        piece = (prefix + filler)[:PIECE] if first else filler
        piece, first = piece[:left], False
        left -= len(piece)
        yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    if chunked:
        yield b"0\r\n\r\n"


def _pump(sock: socket.socket, pieces, received: bytearray) -> tuple[int, bool]:
    """Send every piece, reading answers meanwhile; returns (bytes sent, stalled)."""
    sent, pending = 0, memoryview(b"")
    while True:
        if not pending:
            pending = memoryview(next(pieces, b""))
            if not pending:
                return sent, False
        readable, writable, _ = select.select([sock], [sock], [], IDLE_S)
        if not readable and not writable:
            return sent, True
        try:
            if readable:
                data = sock.recv(65536)
                if not data:
                    return sent, False  # the server closed the connection
                received += data
            if writable:
                n = sock.send(pending)
                sent, pending = sent + n, pending[n:]
        except (BrokenPipeError, ConnectionResetError):
            return sent, False


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data


def _drain(sock: socket.socket, received: bytearray) -> bytes:
    """Whatever else the server sends until it closes the connection (or goes quiet)."""
    sock.settimeout(2.0)
    try:
        while more := sock.recv(65536):
            received += more
    except OSError:
        pass
    return bytes(received)


def _status(answer: bytes) -> int | None:
    line = bytes(answer).split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") else None


class RssSampler:
    """Samples a process's RSS every 20 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, process_rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, process_rss(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_benchmark(total: int, modes: list[str], routes: list[Route] = PUBLIC_ROUTES, quiet: bool = False) -> list[dict]:
    """Stream ``total`` bytes at every route in every mode against a fresh server; one row per stream."""
    rows = []
    with tempfile.TemporaryDirectory() as home, ServerProcess(Path(home)) as server:
        if not quiet:
            print(f"server pid {server.pid}, {total / MIB:g} MiB per stream")
            print(f"{'route':<17} {'mode':<9} {'status':>6} {'sent MiB':>9} {'RSS before':>11} {'peak':>8} {'after':>8}")
        for route in routes:
            for mode in modes:
                before = server.rss()
                with RssSampler(server.pid) as sampler:
                    result = stream(server.port, route, total, mode)
                after = server.rss()
                row = dict(route=route.name, path=route.path, mode=mode, status=result.status, sent=result.sent,
                           stalled=result.stalled, rss_before=before, rss_peak=sampler.peak, rss_after=after,
                           answer=result.answer)
                rows.append(row)
                if not quiet:
                    print(f"{route.name:<17} {mode:<9} {str(result.status):>6} {result.sent / MIB:>9.2f} "
                          f"{before / MIB:>9.1f}MB {sampler.peak / MIB:>6.1f}MB {after / MIB:>6.1f}MB"
                          + ("  (stalled)" if result.stalled else ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=1024.0, help="body size per stream (MiB)")
    parser.add_argument("--modes", default="declared,expect,chunked")
    args = parser.parse_args(argv)
    run_benchmark(int(args.mib * MIB), args.modes.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
