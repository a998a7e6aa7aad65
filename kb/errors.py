"""Errors of the knowledge-base layer: an upload refused (4xx) before anything is stored; the vector store out of
reach (503, and an ingestion job waits for it, ``ingest.pipeline.run_job``)."""
from core.errors import DomainError


class InvalidUpload(DomainError):
    """The uploaded file is refused; the message says why."""

    status_code = 400


class EmptyFile(InvalidUpload):
    pass


class FileTooLarge(InvalidUpload):
    status_code = 413


class UnsupportedFileType(InvalidUpload):
    status_code = 415


class ExtensionMismatch(InvalidUpload):
    status_code = 415


class VectorStoreUnavailable(DomainError):
    """The Chroma server could not be reached (down, restarting, the connection cut): the same call may work later."""

    status_code = 503
