"""The embedded model's supervision with real child processes that really die or hang: a crash is an
error turn that says what happened and where the log is, the next message gets a new server, restarts
are bounded, and nothing hangs."""
from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time

import pytest

from runtime.config import DEFAULT_UNAVAILABLE
from runtime.local_llm import LlamaCppServer, LocalModelUnavailable, SupervisedLocalModel, default_model_path
from tests.conftest import REPO

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def supervised(tmp_path, monkeypatch):
    """A factory of SupervisedLocalModel running tests/llm_standin.py with the given STANDIN_CRASH."""
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(b"GGUF")
    log_path = tmp_path / "logs" / "llama-server.log"
    monkeypatch.chdir(REPO)  # python -m tests.llm_standin
    made = []

    def make(crash: str = "", **kwargs) -> SupervisedLocalModel:
        monkeypatch.setenv("STANDIN_CRASH", crash)
        model = SupervisedLocalModel(
            lambda: LlamaCppServer(model_file, python=sys.executable, module="tests.llm_standin",
                                   log_path=log_path, startup_timeout=30),
            model="standin", **kwargs,
        )
        made.append(model)
        return model

    make.log_path = log_path
    yield make
    for model in made:
        model.close()


def test_a_crash_mid_call_is_reported_and_the_next_call_gets_a_new_server(supervised, tmp_path):
    marker = tmp_path / "crash-next"
    marker.touch()
    model = supervised(f"once:{marker}")
    first_pid = model.start()._proc.pid

    with pytest.raises(LocalModelUnavailable) as err:
        model.complete(HELLO, timeout=20)
    reason = str(err.value)
    assert "the local model process crashed (signal 11, SIGSEGV)" in reason
    assert str(supervised.log_path) in reason and "restarted for the next message" in reason
    assert model.server is None  # the dead process is retired at once

    reply = model.complete(HELLO, timeout=20)
    assert reply.content.startswith("standin pid ") and reply.content != f"standin pid {first_pid}"
    assert supervised.log_path.read_text().count("--- ") == 2  # both starts logged in the kept log


def test_a_process_killed_between_calls_is_replaced_without_failing_the_call(supervised):
    model = supervised()
    proc = model.start()._proc
    pid = proc.pid
    proc.kill()
    proc.wait(timeout=10)
    reply = model.complete(HELLO, timeout=20)
    assert reply.content != f"standin pid {pid}"


def test_a_hung_process_is_killed_and_replaced(supervised):
    model = supervised(health_timeout=1.0)
    server = model.start()
    proc = server._proc
    os.kill(proc.pid, signal.SIGSTOP)  # alive, accepts connections, answers nothing
    started = time.monotonic()
    with pytest.raises(LocalModelUnavailable, match="stopped answering"):
        model.complete(HELLO, timeout=2)
    assert time.monotonic() - started < 15
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert model.complete(HELLO, timeout=20).content.startswith("standin pid ")


def test_restarts_are_bounded_per_window(supervised):
    model = supervised("always", max_restarts=2, window_s=300)
    for _ in range(3):  # the first start and two restarts, each crashing on its first completion
        with pytest.raises(LocalModelUnavailable, match="SIGSEGV"):
            model.complete(HELLO, timeout=20)
    started = time.monotonic()
    with pytest.raises(LocalModelUnavailable, match=r"restarted 2 times in the last 5 min .*last failure: .*SIGSEGV"):
        model.complete(HELLO, timeout=20)
    assert time.monotonic() - started < 1 and model.server is None  # refused at once, nothing started


def test_a_crash_during_start_up_is_an_error_with_the_signal(supervised):
    model = supervised("startup")
    with pytest.raises(LocalModelUnavailable, match=r"could not be started: the local model process crashed "
                                                    r"\(signal 11, SIGSEGV\) during start-up"):
        model.complete(HELLO, timeout=20)


def test_a_crash_is_an_error_turn_and_the_next_message_is_answered(supervised, sqlite_services, tmp_path):
    from kb import registry
    from runtime.llm_provider import FixedChatModelProvider
    from runtime.models import Turn
    from runtime.turn import handle_message

    services = sqlite_services
    marker = tmp_path / "crash-next"
    marker.touch()
    services.chat_models = FixedChatModelProvider(supervised(f"once:{marker}"))
    with services.session() as session:
        registry.create_assistant(session, name="clinic", embedding_model="all-minilm-l6-v2", chunk_size=256, chunk_overlap=32)
        session.commit()
    first = handle_message(services, assistant_ref="clinic", channel="api", sender="api", customer_id="c1", text="Qual o horário?")
    assert first.status == "error" and first.reply == DEFAULT_UNAVAILABLE["pt"]
    assert "crashed (signal 11, SIGSEGV)" in first.error
    second = handle_message(services, assistant_ref="clinic", channel="api", sender="api", customer_id="c1", text="E aos sábados?")
    assert second.status in ("answered", "fallback") and second.reply
    with services.session() as session:
        errors = [t.error for t in session.query(Turn).order_by(Turn.started_at)]
    assert "SIGSEGV" in errors[0] and errors[1] is None


# --- the real embedded server -----------------------------------------------------------------------

MODEL_PATH = default_model_path()


@pytest.mark.llm
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama_cpp is not installed (run scripts/setup_llm.sh)")
@pytest.mark.skipif(not MODEL_PATH.is_file(), reason=f"model file {MODEL_PATH} is absent (run scripts/setup_llm.sh)")
def test_the_real_server_dying_mid_generation_is_reported_and_restarted(tmp_path):
    log_path = tmp_path / "llama-server.log"
    model = SupervisedLocalModel(lambda: LlamaCppServer(MODEL_PATH, n_threads=2, n_ctx=1024, log_path=log_path),
                                 model="local")
    try:
        pid = model.start()._proc.pid
        killer = threading.Timer(1.5, os.kill, (pid, signal.SIGSEGV))
        killer.start()
        with pytest.raises(LocalModelUnavailable, match=r"crashed \(signal 11, SIGSEGV\)"):
            model.complete([{"role": "user", "content": "Count from 1 to 500, one number per line."}],
                           max_tokens=1000, timeout=120)
        killer.join()
        reply = model.complete([{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0, timeout=120)
        assert reply.content.strip() and model.server._proc.pid != pid
    finally:
        model.close()


def test_a_process_that_exits_without_stopping_the_server_takes_it_along(tmp_path):
    """A script or CLI that ends without closing its services leaves no model server behind (each holds GBs)."""
    import subprocess

    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(b"GGUF")
    script = ("import sys; from runtime.local_llm import LlamaCppServer; "
              f"s = LlamaCppServer({str(model_file)!r}, python=sys.executable, module='tests.llm_standin', "
              "startup_timeout=30).start(); print(s._proc.pid, flush=True)")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "STANDIN_CRASH": ""}, check=True)
    pid = int(out.stdout.split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (stop() waited for it), not orphaned
