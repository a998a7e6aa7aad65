"""End-to-end check of the embedded LLM server (needs scripts/setup_llm.sh to have run)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from runtime.local_llm import LlamaCppServer, default_model_path

MODEL_PATH = default_model_path()

pytestmark = [
    pytest.mark.llm,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama_cpp is not installed (run scripts/setup_llm.sh)",
    ),
    pytest.mark.skipif(
        not MODEL_PATH.is_file(),
        reason=f"model file {MODEL_PATH} is absent (run scripts/setup_llm.sh)",
    ),
]


def test_chat_completion_returns_text() -> None:
    from openai import OpenAI

    threads = min(2, os.cpu_count() or 1)
    with LlamaCppServer(MODEL_PATH, n_threads=threads, n_ctx=2048) as server:
        client = OpenAI(base_url=server.base_url, api_key="unused", timeout=120)
        reply = client.chat.completions.create(
            model=server.model_id or "local",
            messages=[
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": "Say hello in one short sentence."},
            ],
            max_tokens=24,
            temperature=0,
        )
    text = reply.choices[0].message.content or ""
    assert text.strip(), f"empty reply: {reply!r}"


def test_host_and_port_in_the_environment_do_not_move_the_server(monkeypatch) -> None:
    """llama_cpp.server prefers $HOST/$PORT to its flags; atende's own PORT must not leak into it."""
    import socket
    import urllib.request

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("HOST", "127.0.0.1")
        with LlamaCppServer(MODEL_PATH, n_threads=1, n_ctx=512) as server:
            assert server.port != taken.getsockname()[1]
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=10) as resp:
                assert resp.status == 200
