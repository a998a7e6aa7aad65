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
    embedding_model: str = "all-minilm-l6-v2"
    chunk_size: int = 256
    chunk_overlap: int = 32
    embed_batch_size: int = 32
    workers: int = 1  # background-job worker threads in `atende serve` (0: none, e.g. with `atende worker`)
    ingest_parallelism: int = 2  # files ingested at once by `atende kb ingest`

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> "Settings":
        if self.environment != "development" and self.admin_token == PLACEHOLDER_TOKEN:
            raise ValueError("ATENDE_ADMIN_TOKEN must be set outside development")
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'atende.db').resolve()}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
