"""Ingestion errors: a job that fails with one shows its message to the admin. Uploads are refused
before ingestion with ``kb.errors.InvalidUpload``."""


class IngestError(Exception):
    """Base of ingestion errors; the message is shown to the admin as is."""


class ParseError(IngestError):
    """The file has the right type but could not be read (corrupt, encrypted, truncated)."""


class NoExtractableText(IngestError):
    """The file parsed but holds no text (e.g. a scanned PDF without a text layer)."""


class ParseLimitExceeded(ParseError):
    """Parsing the file would take more time, memory or inflated size than the configured limits
    allow (a decompression bomb, or a file too big for this server's settings)."""


class IngestTimeLimitExceeded(IngestError):
    """Ingesting one document took longer than ``ingest_timeout_s`` (``ingest.pipeline.Deadline``)."""
