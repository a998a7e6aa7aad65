"""Chooses the chat model from settings: an OpenAI-compatible endpoint, or the embedded llama.cpp
server started on first use (and stopped with ``close``)."""
from __future__ import annotations

import threading

from atende.settings import Settings
from runtime.types import ChatModel


class ChatModelProvider:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._server = None
        self._models: dict[str, ChatModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None = None) -> ChatModel:
        """The chat model called ``name`` (default ``settings.llm_model``)."""
        from runtime.llm import OpenAICompatibleChatModel

        s = self.settings
        name = name or s.llm_model
        with self._lock:
            if name not in self._models:
                base_url, key = s.llm_base_url, s.llm_api_key
                if not base_url:
                    base_url, key = self._local_server().base_url, "local"
                self._models[name] = OpenAICompatibleChatModel(base_url=base_url, api_key=key, model=name)
            return self._models[name]

    def _local_server(self):
        from runtime.local_llm import LlamaCppServer, default_model_path

        if self._server is None:
            path = self.settings.llm_model_path or default_model_path()
            if not path.exists():
                raise FileNotFoundError(
                    f"local model not found at {path}: run scripts/setup_llm.sh (make run does) or set ATENDE_LLM_BASE_URL"
                )
            self._server = LlamaCppServer(path, n_threads=self.settings.llm_threads, n_ctx=self.settings.llm_context).start()
        return self._server

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stop()
                self._server = None
            self._models.clear()


class FixedChatModelProvider:
    """Always hands out the same model (tests, benchmarks)."""

    def __init__(self, model: ChatModel):
        self.model = model

    def get(self, name: str | None = None) -> ChatModel:
        return self.model

    def close(self) -> None:
        pass
