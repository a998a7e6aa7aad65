"""Builds the process's shared components (runtime.services.Services) from settings, at the edge (CLI or app factory)."""
from __future__ import annotations

from atende.migrate import migrate
from core.db import make_engine, make_sessionmaker
from core.settings import Settings
from kb.blobs import BlobStore
from kb.embedders import EmbedderRegistry
from kb.vectorstore import ChromaVectorStore
from runtime.llm_provider import ChatModelProvider
from runtime.services import Services


def build_services(settings: Settings, run_migrations: bool = True) -> Services:
    """Open the database (migrated to head), the vector store, the file store and the embedders."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url, settings.db_pool_size, settings.db_max_overflow)
    if run_migrations:
        migrate(engine)
    vectors = (
        ChromaVectorStore(url=settings.chroma_url)
        if settings.chroma_url
        else ChromaVectorStore(path=settings.home / "chroma")
    )
    return Services(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        embedders=EmbedderRegistry(),
        vectors=vectors,
        blobs=BlobStore(settings.home / "files"),
        chat_models=ChatModelProvider(settings),
    )
