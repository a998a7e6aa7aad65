"""Upload errors of the knowledge-base layer: an upload is refused (4xx) before anything is stored."""
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
