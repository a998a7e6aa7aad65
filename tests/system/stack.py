"""Real processes for the profile and fault tests: `atende serve` / `atende worker` children, a Chroma server
(`chroma run`), a private redis-server, the chat-model stand-in (tests/llm_standin.py), each in its own process
group so a stop (or a kill -9) takes its children with it, and none outlives the test process."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, REPO, TEST_SECRETS
from tests.factories import wait_until

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def http_ok(url: str) -> bool:
    """GET ``url`` answers 200 (False when nothing listens)."""
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _die_with_parent() -> None:
    """In the child before it runs: the kernel kills it when the test process dies, even by kill -9 (Linux)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """A child process in its own session (process group), its output in ``log``; ``kill`` signals the whole
    group, ``start`` runs the same command again."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> Child:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the child's process group (its forked children too)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL if it is still there after ``timeout``; reaped either way."""
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(timeout)
        self.kill(signal.SIGKILL)  # what the leader left behind in its group
        self.proc = None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


class Processes:
    """The children of a stack; ``stop_all`` stops them newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.log_dir)
        self.children.append(child)
        return child

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM to every group at once, then each waited for (SIGKILL past ``timeout``)."""
        for child in self.children:
            child.kill(signal.SIGTERM)
        for child in reversed(self.children):
            child.stop(timeout)


def base_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of an atende child: this repository, offline models, the tests' secrets, ``settings``
    as ``ATENDE_*``/URL variables (given already named, e.g. ``DATABASE_URL``)."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "CI")}
    env = {**keep, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "ATENDE_HOME": str(home)}
    env.update({f"ATENDE_{name.upper()}": value for name, value in TEST_SECRETS.items()})
    env.update(settings)
    return env


def atende(processes: Processes, name: str, args: list[str], env: dict[str, str]) -> Child:
    """``python -m atende.cli ARGS`` of this checkout as a child."""
    return processes.spawn(name, [sys.executable, "-m", "atende.cli", *args], env)


def api_process(processes: Processes, name: str, env: dict[str, str]) -> tuple[Child, str]:
    """``atende serve`` on a free loopback port; returns the child and its base URL once /healthz answers."""
    port = free_port()
    child = atende(processes, name, ["serve", "--host", "127.0.0.1", "--port", str(port)], env)
    return child, f"http://127.0.0.1:{port}"


def wait_api(child: Child, url: str, timeout: float = 120.0) -> None:
    try:
        wait_until(lambda: http_ok(f"{url}/healthz") or not child.alive, timeout, f"{child.name} up")
    finally:
        if not child.alive:
            raise AssertionError(f"{child.name} exited:\n{child.tail()}")


def chroma_server(processes: Processes, path: Path, port: int, name: str = "chroma") -> Child:
    """``chroma run`` (the chromadb package's server) on loopback, data in ``path``; returns once it answers."""
    child = processes.spawn(name, [str(VENV_BIN / "chroma"), "run", "--path", str(path), "--host", "127.0.0.1",
                                   "--port", str(port)], {**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    wait_chroma(child, port)
    return child


def wait_chroma(child: Child, port: int) -> None:
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/api/v2/heartbeat") or not child.alive, 60,
               f"{child.name} up")
    assert child.alive, child.tail()


def redis_server(processes: Processes, port: int, name: str = "redis") -> Child:
    """A private redis-server on loopback that keeps nothing on disk; returns once it answers PING."""
    import redis

    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    child = processes.spawn(name, [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                   "--appendonly", "no"], dict(os.environ))

    def pong() -> bool:
        try:
            return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_until(pong, 30, f"{name} up")
    return child


def llm_standin(processes: Processes, port: int, reply: str, hold: Path | None = None) -> Child:
    """tests/llm_standin.py answering every completion with ``reply``; with ``hold``, a completion waits while
    that file exists (and touches ``hold``.held when it starts waiting)."""
    env = {**os.environ, "STANDIN_REPLY": reply, "PYTHONPATH": str(REPO)}
    if hold is not None:
        env["STANDIN_HOLD"] = str(hold)
    child = processes.spawn("llm", [sys.executable, "-m", "tests.llm_standin", "--port", str(port)], env)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/v1/models") or not child.alive, 30, "llm stand-in up")
    assert child.alive, child.tail()
    return child


def admin_client(url: str) -> httpx.Client:
    """An HTTP client of one API process, as the admin."""
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30,
                        trust_env=False)


class PostgresCluster:
    """A private PostgreSQL cluster (``initdb`` in a temporary directory, trust auth, loopback only, fsync off)
    that a test may restart. As root, ``initdb`` and the server run as the ``postgres`` user (PostgreSQL refuses
    root). The postmaster is a daemon, not a child: ``close`` stops it."""

    def __init__(self, port: int) -> None:
        import pwd
        import tempfile

        self.port = port
        self.bin = self._bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="atende-pg-"))
        self.data = self.root / "data"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    @staticmethod
    def _bin_dir() -> Path:
        found = shutil.which("initdb")
        if found:
            return Path(found).resolve().parent
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not candidates:
            raise FileNotFoundError("initdb not found (PostgreSQL server binaries)")
        return candidates[-1].parent

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}\n{done.stderr}"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``immediate`` is a crash (no shutdown checkpoint; recovery at next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def close(self) -> None:
        with contextlib.suppress(AssertionError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
