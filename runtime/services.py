"""The process's shared components, built once from settings at the edge (atende.services.build_services)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db import utcnow
from core.settings import Settings
from kb.blobs import BlobStore
from kb.embedders import EmbedderRegistry
from kb.keyword import KeywordIndexCache
from kb.vectorstore import ChromaVectorStore
from runtime.approved_index import ApprovedIndexCache


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    embedders: EmbedderRegistry
    vectors: ChromaVectorStore
    blobs: BlobStore
    # hands a job id to the background queue; None means callers run jobs inline
    enqueue: Callable[[str], None] | None = None
    # delivers outbound events (handoff notifications) by id, in the background
    deliver_events: Callable[[list[str]], None] | None = None
    # ChatModelProvider-like: .get(name) -> ChatModel, .close()
    chat_models: object | None = None
    # hands a stored WhatsApp webhook post to the background queue; None means process inline
    enqueue_webhook: Callable[[str], None] | None = None
    # runs a WhatsApp conversation's turn after a delay in seconds; None means run inline
    schedule_turn: Callable[[str, float], None] | None = None
    # the Graph API client every WhatsApp send shares, built at the first (runtime.whatsapp.outbound.graph_client)
    whatsapp_graph: object | None = None
    # the time, replaceable in tests (24-hour window)
    clock: Callable[[], datetime] = utcnow
    # BM25 indexes of the knowledge bases, rebuilt when their current versions change
    keywords: KeywordIndexCache = field(default_factory=KeywordIndexCache)
    # question vectors of the assistants' approved answers, rebuilt when those change
    approved_indexes: ApprovedIndexCache = field(default_factory=ApprovedIndexCache)
    # told, inside the transaction that changes it, that a document got a new version or is deleted:
    # (session, document_id, reason); flags the approved answers derived from it for review
    document_changed: Callable[[Session, str, str], object] | None = None

    def session(self) -> Session:
        return self.sessions()

    def close(self) -> None:
        """Close what the services opened: the chat models and the Graph API client (a later send opens another)."""
        if self.chat_models is not None:
            self.chat_models.close()
        graph, self.whatsapp_graph = self.whatsapp_graph, None
        if graph is not None:
            graph.close()

