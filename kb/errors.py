"""Errors of the knowledge-base layer; api/errors.py maps them to HTTP statuses."""


class KBError(Exception):
    """Base of knowledge-base errors."""


class NotFound(KBError):
    """The assistant, document or job does not exist."""


class Conflict(KBError):
    """The request clashes with stored state (duplicate name, operation in progress)."""


class InvalidRequest(KBError):
    """A value in the request is out of range or malformed."""
