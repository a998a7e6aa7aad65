"""Embedded local LLM: run ``llama_cpp.server`` as a child process.

The server speaks the OpenAI HTTP API on loopback, so any OpenAI client can use
``LlamaCppServer.base_url``. ``scripts/setup_llm.sh`` installs llama-cpp-python
and assembles the model file at :func:`default_model_path`.

Known server quirks (llama-cpp-python 0.3.x): tool calls come back as text in
``content`` unless ``tool_choice`` names a function, and assistant messages
with ``content: null`` are rejected (send ``""``).

:class:`SupervisedLocalModel` is the chat model on top: when the server process
dies (any signal) or stops answering, the call fails with a reason a person can
act on and the server is started again for the next call, a bounded number of
times per window.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from runtime.llm import ChatModelError, OpenAICompatibleChatModel
from runtime.types import ChatMessage, ChatResponse, ToolSchema

log = logging.getLogger(__name__)

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def default_model_path(cache_dir: Path | None = None) -> Path:
    """Where ``scripts/setup_llm.sh`` puts the model.

    ``cache_dir`` is the models directory; without it, ``$ATENDE_MODEL_DIR`` or
    ``$XDG_CACHE_HOME/atende/models`` (default ``~/.cache/atende/models``).
    """
    return (cache_dir or models_dir()) / MODEL_FILENAME


def models_dir() -> Path:
    """The models directory the set-up scripts fill: ``$ATENDE_MODEL_DIR``, else ``$XDG_CACHE_HOME/atende/models``
    (default ``~/.cache/atende/models``)."""
    env_dir = os.environ.get("ATENDE_MODEL_DIR")
    if env_dir:
        return Path(env_dir)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "atende" / "models"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LlamaCppServer:
    """A ``llama_cpp.server`` child process; use ``with LlamaCppServer(path) as srv:``."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_threads: int = 2,
        n_ctx: int = 4096,
        host: str = "127.0.0.1",
        port: int | None = None,
        python: str = sys.executable,
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        module: str = "llama_cpp.server",
    ) -> None:
        """``log_path``: a file the server's output is appended to (kept after it stops; default: a
        temporary file removed at ``stop``). ``module``: the server module run with ``python -m``."""
        self.model_path = Path(model_path)
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.host = host
        self.port = port
        self.python = python
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.module = module
        self.model_id: str | None = None  # id reported by GET /v1/models
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._http: httpx.Client | None = None  # to the server, from start() to stop()

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> LlamaCppServer:
        """Start the server and block until it answers ``GET /v1/models``."""
        if self._proc is not None:
            raise RuntimeError("server already started")
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path} (run scripts/setup_llm.sh)")
        if self.port is None:
            self.port = _free_port(self.host)
        cmd = [
            self.python, "-m", self.module,
            "--model", str(self.model_path),
            "--host", self.host,
            "--port", str(self.port),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--n_ctx", str(self.n_ctx),
            *self.extra_args,
        ]  # fmt: skip
        # Server output goes to a file (a pipe could fill up and block it).
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (the server's output until stop() closes it)
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            self._log.write(f"\n--- {stamp} starting: {' '.join(cmd)}\n".encode())
            self._log.flush()
        else:
            self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log")  # noqa: SIM115 (as above)
        # llama_cpp.server lets $HOST / $PORT override --host / --port: a PORT exported for atende itself
        # (``make run PORT=...``, a PaaS) would make it bind atende's port and exit
        env = {**os.environ, "HOST": self.host, "PORT": str(self.port)}
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        # a process that ends without stopping its services (a script, an interrupted CLI) takes the server with it:
        # left behind, each holds ~3 GB and its threads
        atexit.register(self.stop)
        # loopback: never via a proxy (trust_env=False ignores $HTTP_PROXY and the like)
        self._http = httpx.Client(base_url=f"http://{self.host}:{self.port}", trust_env=False, timeout=30.0)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/models"
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.exit_reason()} during start-up; last output:\n{self.output_tail()}")
            try:
                data = self._fetch_json("/v1/models", timeout=2).get("data") or [{}]
                self.model_id = data[0].get("id")
                return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"llama_cpp.server did not answer {url} within {self.startup_timeout:.0f} s; "
                    f"last output:\n{self.output_tail()}"
                )
            time.sleep(0.25)

    @property
    def log_file(self) -> str:
        """Where the server's output goes."""
        return str(self.log_path) if self.log_path else (self._log.name if self._log else "")

    def exit_reason(self) -> str | None:
        """None while the process runs; else how it ended, in words (a signal is named)."""
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            return f"the local model process crashed (signal {-code}, {name})"
        return f"the local model process exited with code {code}"

    def responsive(self, timeout: float = 3.0) -> bool:
        """Whether the server answers ``GET /v1/models`` within ``timeout`` seconds."""
        if self._http is None:
            return False
        try:
            return self._http.get("/v1/models", timeout=timeout).status_code == 200
        except (httpx.HTTPError, RuntimeError):  # RuntimeError: stopped meanwhile (the client is closed)
            return False

    def count_tokens(self, text: str, timeout: float = 30.0) -> int:
        """Tokens of ``text`` by the served model's own tokenizer (``POST /extras/tokenize/count``, special
        tokens parsed). The server runs one request at a time: this waits for a completion in progress."""
        return int(self._fetch_json("/extras/tokenize/count", {"input": text}, timeout=timeout)["count"])

    def _fetch_json(self, path: str, payload: dict | None = None, *, timeout: float) -> dict:
        """GET ``path``, or POST ``payload`` to it as JSON, and return the JSON answer. An error status raises
        ``httpx.HTTPStatusError``, no answer an ``httpx.TransportError`` (both ``httpx.HTTPError``); a server
        not started or stopped meanwhile, RuntimeError."""
        if self._http is None:
            raise RuntimeError("server not started")
        method = "GET" if payload is None else "POST"
        return self._http.request(method, path, json=payload, timeout=timeout).raise_for_status().json()

    def busy(self, sample_s: float = 1.0) -> bool:
        """Whether the process is using CPU (generating for someone) over ``sample_s`` seconds; a
        stopped, zombie or idle process is not. Without ``/proc`` it is assumed busy."""
        def cpu_ticks() -> tuple[str, int] | None:
            try:
                stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
            except (OSError, AttributeError):
                return None
            fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            return fields[0], int(fields[11]) + int(fields[12])  # utime + stime

        before = cpu_ticks()
        if before is None:
            return self._proc is not None and self._proc.poll() is None
        time.sleep(sample_s)
        after = cpu_ticks()
        return after is not None and after[0] not in ("T", "t", "Z", "X") and after[1] > before[1]

    def output_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines the server wrote to stdout/stderr."""
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (kill it if it does not exit within ``timeout``)."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def kill(self) -> None:
        """Kill the process at once (it stopped answering) and release its log."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalModelUnavailable(ChatModelError):
    """The embedded model process crashed, stopped answering or could not be started."""


class SupervisedLocalModel:
    """A :class:`~runtime.types.ChatModel` on an embedded ``llama_cpp.server`` it keeps alive.

    ``server_factory`` makes a new, unstarted :class:`LlamaCppServer`. When a call fails because the
    process died (any signal) or stopped answering (a health check gets no reply), it raises
    :class:`LocalModelUnavailable` saying so and where the server's log is; the dead or hung process
    is killed and a new one is started by the next call. At most ``max_restarts`` restarts happen
    within ``window_s`` seconds; past that, calls fail at once (without starting anything) until the
    window has moved on. Thread-safe: concurrent calls share one server.
    """

    def __init__(
        self, server_factory: Callable[[], LlamaCppServer], model: str, *, max_restarts: int = 3,
        window_s: float = 600.0, health_timeout: float = 3.0,
    ) -> None:
        self.name = model
        self.server_factory = server_factory
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.health_timeout = health_timeout
        self._lock = threading.Lock()
        self._server: LlamaCppServer | None = None
        self._client: OpenAICompatibleChatModel | None = None
        self._starts = 0
        self._restarts: deque[float] = deque()  # monotonic times of restarts within the window
        self._last_failure: str | None = None

    @property
    def server(self) -> LlamaCppServer | None:
        """The running server, if any."""
        return self._server

    def start(self) -> LlamaCppServer:
        """Start the server unless it runs; raise :class:`LocalModelUnavailable` if it cannot."""
        return self._running()[0]

    def complete(
        self, messages: list[ChatMessage], tools: list[ToolSchema] | None = None, *, temperature: float = 0.2,
        max_tokens: int = 256, timeout: float = 120.0,
    ) -> ChatResponse:
        """One chat completion; see :meth:`OpenAICompatibleChatModel.complete`."""
        server, client = self._running()
        try:
            return client.complete(messages, tools, temperature=temperature, max_tokens=max_tokens, timeout=timeout)
        except ChatModelError as exc:
            reason = self._diagnose(server)
            if reason is None:
                raise
            raise LocalModelUnavailable(reason) from exc

    @property
    def context_tokens(self) -> int:
        """The server's context window (``n_ctx``); starts the server if it does not run."""
        return self._running()[0].n_ctx

    def count_tokens(self, text: str, timeout: float = 30.0) -> int:
        """Tokens of ``text`` for this model; see :meth:`LlamaCppServer.count_tokens`. Fails like
        :meth:`complete` when the server is down."""
        server, _ = self._running()
        try:
            return server.count_tokens(text, timeout)
        # httpx's errors and timeouts are HTTPErrors; RuntimeError: the server was stopped meanwhile
        except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
            reason = self._diagnose(server)
            if reason is not None:
                raise LocalModelUnavailable(reason) from exc
            raise ChatModelError(f"{self.name}: counting tokens failed ({exc})") from exc

    def close(self) -> None:
        """Stop the server."""
        with self._lock:
            server, self._server, self._client = self._server, None, None
        if server is not None:
            server.stop()

    def _running(self) -> tuple[LlamaCppServer, OpenAICompatibleChatModel]:
        with self._lock:
            if self._server is not None and self._server.exit_reason() is not None:
                self._retire(self._server, f"{self._server.exit_reason()} between calls")
            if self._server is None:
                self._start_locked()
            assert self._server is not None and self._client is not None
            return self._server, self._client

    def _start_locked(self) -> None:
        now = time.monotonic()
        if self._starts:
            while self._restarts and now - self._restarts[0] > self.window_s:
                self._restarts.popleft()
            if len(self._restarts) >= self.max_restarts:
                wait = self.window_s - (now - self._restarts[0])
                raise LocalModelUnavailable(
                    f"the local model was restarted {len(self._restarts)} times in the last "
                    f"{self.window_s / 60:g} min and is not restarted again for {wait:.0f} s; "
                    f"last failure: {self._last_failure}"
                )
            self._restarts.append(now)
            log.warning("restarting the local model server (restart %d of %d allowed in %g s) after: %s",
                        len(self._restarts), self.max_restarts, self.window_s, self._last_failure)
        self._starts += 1
        server = self.server_factory()
        try:
            server.start()
        except (RuntimeError, TimeoutError, OSError) as exc:
            self._last_failure = f"{str(exc).splitlines()[0]} (see {server.log_file or 'its output'})"
            raise LocalModelUnavailable(f"the local model could not be started: {self._last_failure}") from exc
        self._server = server
        self._client = OpenAICompatibleChatModel(base_url=server.base_url, api_key="local", model=self.name)

    def _diagnose(self, server: LlamaCppServer) -> str | None:
        """Why a failed call failed, if the process is to blame (then it is retired); else None."""
        # a server busy generating does not answer its health check either: only an idle or stopped one
        # that does not answer has hung
        reason = server.exit_reason()
        if reason is None and not server.responsive(self.health_timeout) and not server.busy():
            reason = f"the local model process stopped answering (no reply within {self.health_timeout:g} s, idle)"
        if reason is None:
            return None
        log_file = server.log_file
        with self._lock:
            if self._server is server:
                self._retire(server, reason)
        return f"{reason}; see {log_file}; it is restarted for the next message"

    def _retire(self, server: LlamaCppServer, reason: str) -> None:
        log.error("%s; see %s", reason, server.log_file)
        self._last_failure = reason
        self._server, self._client = None, None
        server.kill()


_PERF = re.compile(r"^llama_perf_context_print:\s*(prompt eval|eval) time =\s*([\d.]+) ms /\s*(\d+) (?:tokens|runs)", re.M)


def throughput(log_text: str) -> dict[str, float]:
    """Prompt and generation speed summed over every completion in a server log (llama.cpp prints a
    ``llama_perf_context_print`` line per stage and completion): ``prompt_tokens``, ``prompt_tok_s``,
    ``generated_tokens``, ``gen_tok_s``."""
    totals = {"prompt eval": [0.0, 0], "eval": [0.0, 0]}
    for stage, ms, tokens in _PERF.findall(log_text):
        totals[stage][0] += float(ms)
        totals[stage][1] += int(tokens)
    (p_ms, p_n), (g_ms, g_n) = totals["prompt eval"], totals["eval"]
    return {"prompt_tokens": p_n, "prompt_tok_s": round(p_n / p_ms * 1000, 1) if p_ms else 0.0,
            "generated_tokens": g_n, "gen_tok_s": round(g_n / g_ms * 1000, 1) if g_ms else 0.0}
