"""Ingestion errors. ``InvalidUpload`` is refused at upload time (4xx); the rest fail a job."""


class IngestError(Exception):
    """Base of ingestion errors; the message is shown to the admin as is."""


class InvalidUpload(IngestError):
    status_code = 400


class EmptyFile(InvalidUpload):
    pass


class FileTooLarge(InvalidUpload):
    status_code = 413


class UnsupportedFileType(InvalidUpload):
    status_code = 415


class ExtensionMismatch(InvalidUpload):
    status_code = 415


class ParseError(IngestError):
    """The file has the right type but could not be read (corrupt, encrypted, truncated)."""


class NoExtractableText(IngestError):
    """The file parsed but holds no text (e.g. a scanned PDF without a text layer)."""


class ParseLimitExceeded(ParseError):
    """Parsing the file would take more time, memory or inflated size than the configured limits
    allow (a decompression bomb, or a file too big for this server's settings)."""
