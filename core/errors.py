"""The project's error base and its generic kinds, raised by every layer; api/errors.py maps them to HTTP statuses."""


class DomainError(Exception):
    """Base of the domain errors (knowledge bases, conversations, approved answers, ...)."""


class NotFound(DomainError):
    """The assistant, document or job does not exist."""


class Conflict(DomainError):
    """The request clashes with stored state (duplicate name, operation in progress)."""


class InvalidRequest(DomainError):
    """A value in the request is out of range or malformed."""


class Forbidden(DomainError):
    """The user's role, or the assistants they may see, do not allow the request."""
