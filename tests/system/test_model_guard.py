"""The guard of tests/model_guard.py, run on a test file of its own in a separate pytest process: tests not
marked ``llm`` fail when they start the local model server, ask for the embedded model, call the OpenAI API or
a server on this machine that the run does not serve, also when they swallow the guard's error; a stand-in of
the run, a refused port and a test marked ``llm`` pass."""
from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from tests.conftest import REPO

GUARDED = '''
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from core.settings import Settings
from runtime.llm import ChatModelError, OpenAICompatibleChatModel
from runtime.llm_provider import ChatModelProvider
from runtime.local_llm import LlamaCppServer

HI = [{"role": "user", "content": "hi"}]


def test_starts_the_local_server(tmp_path):
    LlamaCppServer(tmp_path / "model.gguf").start()


def test_asks_for_the_embedded_model_and_swallows_the_error(tmp_path):
    settings = Settings(home=tmp_path, llm_base_url=None, llm_model_path=tmp_path / "model.gguf")
    try:
        ChatModelProvider(settings).get()
    except BaseException:
        pass


def test_calls_the_openai_api():
    OpenAICompatibleChatModel(None, "sk-none", "gpt-4o-mini").complete(HI)


def test_calls_a_server_this_run_does_not_serve():
    OpenAICompatibleChatModel(os.environ["OTHER_SERVER"], "k", "m").complete(HI, timeout=5)


@pytest.mark.llm
def test_marked_llm_is_let_through(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):  # the real start ran
        LlamaCppServer(tmp_path / "model.gguf").start()


def test_a_stand_in_of_the_run_and_a_refused_port_pass():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"id": "1", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert OpenAICompatibleChatModel(url, "k", "m").complete(HI, timeout=5).content == "ok"
    finally:
        server.shutdown()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ChatModelError, match="connection failed"):
        OpenAICompatibleChatModel(f"http://127.0.0.1:{port}/v1", "k", "m", max_retries=0).complete(HI, timeout=5)
'''


class _Silent(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_unmarked_tests_that_reach_a_real_model_fail_and_say_what_they_reached(pytester, monkeypatch):
    other = HTTPServer(("127.0.0.1", 0), _Silent)  # served by this process, not by the run below
    threading.Thread(target=other.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTHER_SERVER", f"http://127.0.0.1:{other.server_address[1]}/v1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    pytester.makeini("[pytest]\nmarkers = llm: needs the local LLM\n")
    pytester.makepyfile(test_guarded=GUARDED)
    try:
        result = pytester.runpytest_subprocess("-p", "tests.model_guard", "-p", "no:cacheprovider", "-rf")
    finally:
        other.shutdown()
        other.server_close()

    result.assert_outcomes(passed=2, failed=4)
    reached = "is not marked @pytest.mark.llm but reached a real chat model:"
    result.stdout.fnmatch_lines_random([
        (f"*test_guarded.py::test_starts_the_local_server {reached} the local model server "
        f"(llama_cpp.server on *model.gguf)*"),
        (f"*test_guarded.py::test_asks_for_the_embedded_model_and_swallows_the_error {reached} the embedded "
        f"llama.cpp model (ChatModelProvider without llm_base_url, *model.gguf)*"),
        (f"*test_guarded.py::test_calls_the_openai_api {reached} the OpenAI-compatible endpoint "
        f"https://api.openai.com/v1 (model gpt-4o-mini)*"),
        (f"*test_guarded.py::test_calls_a_server_this_run_does_not_serve {reached} the OpenAI-compatible endpoint "
        f"http://127.0.0.1:{other.server_address[1]}/v1 (model m)*"),
    ])
    result.stdout.no_fnmatch_line("*test_marked_llm_is_let_through*reached*")

