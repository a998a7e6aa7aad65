"""The process's shared components, built once from settings at the edge (atende.services.build_services)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db import utcnow
from core.settings import Settings
from kb.blobs import BlobStore
from kb.embedders import EmbedderRegistry
from kb.keyword import KeywordIndexCache
from kb.vectorstore import ChromaVectorStore
from runtime.approved import flag_for_review
from runtime.approved_index import ApprovedIndexCache
from runtime.transcription import Transcriber
from runtime.whatsapp.app_keys import AppKeys

if TYPE_CHECKING:
    from runtime.queue import WorkQueue

SESSION_SERVICES = "atende.services"  # a session's info key of the services that made it


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    embedders: EmbedderRegistry
    vectors: ChromaVectorStore
    blobs: BlobStore
    # ChatModelProvider-like: .get(name) -> ChatModel, .close()
    chat_models: object | None = None
    # the Graph API client every WhatsApp send shares, built at the first (runtime.whatsapp.outbound.graph_client)
    whatsapp_graph: object | None = None
    # runtime.transcription.Transcriber: the speech-to-text engine of voice notes, built at first use
    # (runtime.whatsapp.media.transcriber)
    transcriber: Transcriber | None = None
    # the WhatsApp apps' secrets and what they own, as the webhook checks posts against them (read every 30 s)
    whatsapp_apps: AppKeys = field(default_factory=AppKeys)
    # the webhook intake's connections (runtime.whatsapp.inbound.accept_post): on a database server, a small pool
    # of its own that skips the pre-ping round trip (the intake retries a dead connection); None: ``engine``
    intake_engine: Engine | None = None
    # the time, replaceable in tests (24-hour window)
    clock: Callable[[], datetime] = utcnow
    # BM25 indexes of the knowledge bases, rebuilt when their current versions change
    keywords: KeywordIndexCache = field(default_factory=KeywordIndexCache)
    # question vectors of the assistants' approved answers, rebuilt when those change
    approved_indexes: ApprovedIndexCache = field(default_factory=ApprovedIndexCache)
    # told by ingestion (which cannot import runtime), inside the transaction that swaps a document's new
    # version in: (session, document_id, reason); flags the approved answers derived from it for review
    document_changed: Callable[[Session, str, str], object] = flag_for_review
    # where background work goes (runtime.queue.WorkQueue): an inline queue, doing the work at once in the caller's
    # thread, until the composition root puts atende.jobs.HueyQueue here; a dataclasses.replace copy gets an inline
    # queue of its own
    queue: WorkQueue = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from runtime.queue import InlineQueue  # it runs the work, which takes Services

        self.queue = InlineQueue(self)

    def session(self) -> Session:
        """A new session; the outbound events made in it go to this queue once it commits (``runtime.events``)."""
        session = self.sessions()
        session.info[SESSION_SERVICES] = self
        return session

    @property
    def intake(self) -> Engine:
        """The engine the webhook intake stores posts with (``intake_engine``, else ``engine``)."""
        return self.intake_engine or self.engine

    def close(self) -> None:
        """Close what the services opened: the chat models, the Graph API client (a later send opens another) and
        the intake's connections."""
        if self.intake_engine is not None:
            self.intake_engine.dispose()
        if self.chat_models is not None:
            self.chat_models.close()
        graph, self.whatsapp_graph = self.whatsapp_graph, None
        if graph is not None:
            graph.close()

