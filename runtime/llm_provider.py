"""Chooses the chat model from settings: an OpenAI-compatible endpoint, or the embedded llama.cpp
server, supervised (started on first use, restarted after a crash, stopped with ``close``)."""
from __future__ import annotations

import threading
from pathlib import Path

from core.settings import Settings
from runtime.types import ChatModel


def local_server_log(settings: Settings) -> Path:
    """Where the embedded server's output is kept (appended across restarts)."""
    return (settings.home / "logs" / "llama-server.log").resolve()


class ChatModelProvider:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._local = None  # the SupervisedLocalModel shared by every model name
        self._models: dict[str, ChatModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None = None) -> ChatModel:
        """The chat model called ``name`` (default ``settings.llm_model``); the embedded server is started
        here if it does not run (:class:`~runtime.local_llm.LocalModelUnavailable` if it cannot be)."""
        from runtime.llm import OpenAICompatibleChatModel

        s = self.settings
        name = name or s.llm_model
        if not s.llm_base_url:
            local = self._local_model()
            local.start()
            return local
        with self._lock:
            if name not in self._models:
                self._models[name] = OpenAICompatibleChatModel(base_url=s.llm_base_url, api_key=s.llm_api_key, model=name)
            return self._models[name]

    def _local_model(self):
        from runtime.local_llm import LlamaCppServer, SupervisedLocalModel, default_model_path

        with self._lock:
            if self._local is None:
                s = self.settings
                path = s.llm_model_path or default_model_path()
                if not path.exists():
                    raise FileNotFoundError(
                        f"local model not found at {path}: run scripts/setup_llm.sh (make run does) or set ATENDE_LLM_BASE_URL"
                    )
                log_path = local_server_log(s)
                self._local = SupervisedLocalModel(
                    lambda: LlamaCppServer(path, n_threads=s.llm_threads, n_ctx=s.llm_context, log_path=log_path),
                    model=s.llm_model,
                )
            return self._local

    def close(self) -> None:
        with self._lock:
            if self._local is not None:
                self._local.close()
                self._local = None
            self._models.clear()


class FixedChatModelProvider:
    """Always hands out the same model (tests, benchmarks)."""

    def __init__(self, model: ChatModel):
        self.model = model

    def get(self, name: str | None = None) -> ChatModel:
        return self.model

    def close(self) -> None:
        pass
