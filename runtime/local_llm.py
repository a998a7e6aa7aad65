"""Embedded local LLM: run ``llama_cpp.server`` as a child process.

The server speaks the OpenAI HTTP API on loopback, so any OpenAI client can use
``LlamaCppServer.base_url``. ``scripts/setup_llm.sh`` installs llama-cpp-python
and assembles the model file at :func:`default_model_path`.

Known server quirks (llama-cpp-python 0.3.x): tool calls come back as text in
``content`` unless ``tool_choice`` names a function, and assistant messages
with ``content: null`` are rejected (send ``""``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def default_model_path(cache_dir: Path | None = None) -> Path:
    """Where ``scripts/setup_llm.sh`` puts the model.

    ``cache_dir`` is the models directory; without it, ``$ATENDE_MODEL_DIR`` or
    ``$XDG_CACHE_HOME/atende/models`` (default ``~/.cache/atende/models``).
    """
    if cache_dir is None:
        env_dir = os.environ.get("ATENDE_MODEL_DIR")
        if env_dir:
            cache_dir = Path(env_dir)
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            cache_dir = (Path(xdg) if xdg else Path.home() / ".cache") / "atende" / "models"
    return cache_dir / MODEL_FILENAME


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
    ) -> None:
        self.model_path = Path(model_path)
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.host = host
        self.port = port
        self.python = python
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.model_id: str | None = None  # id reported by GET /v1/models
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

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
            self.python, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--host", self.host,
            "--port", str(self.port),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--n_ctx", str(self.n_ctx),
            *self.extra_args,
        ]  # fmt: skip
        # Server output goes to a temp file (a pipe could fill up and block it).
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log")
        # llama_cpp.server lets $HOST / $PORT override --host / --port: a PORT exported for atende itself
        # (``make run PORT=...``, a PaaS) would make it bind atende's port and exit
        env = {**os.environ, "HOST": self.host, "PORT": str(self.port)}
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
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
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with code {code} during start-up; "
                    f"last output:\n{self.output_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    data = json.load(resp).get("data") or [{}]
                    self.model_id = data[0].get("id")
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"llama_cpp.server did not answer {url} within {self.startup_timeout:.0f} s; "
                    f"last output:\n{self.output_tail()}"
                )
            time.sleep(0.25)

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

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
