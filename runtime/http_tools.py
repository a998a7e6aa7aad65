"""Outbound HTTP: lookups in the customer's own systems (HTTP tools) and event webhooks.

An HTTP tool's URL is admin-configured but filled with model-chosen arguments, so every call goes through the
address guard of ``core.outbound`` (public addresses only, the connection pinned to the checked one, one wall-clock
deadline). Redirects are refused, responses are read as a stream and cut at ``max_response_bytes``. A model's value
fills one path segment, encoded; one that would change the path (``/``, ``.``, ``..``) is refused, since the HTTP
client resolves dot segments and ``/api/customers/../orders`` would reach ``/api/orders`` with the server's
credential.
"""
from __future__ import annotations

import json
import time
from urllib.parse import quote

import httpx

from core import signing
from core.outbound import OutboundRefused, Unresolvable, fetch
from core.settings import Settings
from runtime.config import PLACEHOLDER, HttpTool

USER_AGENT = "atende-http-tool/1"
ERROR_SNIPPET = 300
SIGNATURE_HEADER = "X-Atende-Signature"  # "sha256=" + hex HMAC-SHA256(secret, f"{timestamp}." + body)
TIMESTAMP_HEADER = "X-Atende-Timestamp"  # Unix seconds when the request was signed


class HttpToolError(Exception):
    """An HTTP tool or webhook call failed; the message says why, without secrets. ``status_code``: the
    service's HTTP status, when it answered."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RefusedAddress(HttpToolError):
    """The URL is not one the guard lets us reach (not http(s), or not a public address): trying again is useless."""


def call_http_tool(tool: HttpTool, arguments: dict, settings: Settings, *, bound: dict[str, str] | None = None,
                   timeout_s: float | None = None) -> str:
    """Call ``tool`` with the model's ``arguments`` and the runtime's ``bound`` placeholder values; returns
    the response text (cut at the tool's limit). The whole call ends within ``timeout_s`` (default the tool's)."""
    url, rest = fill_url(tool.url, arguments, bound or {})
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, text/*;q=0.9, */*;q=0.1"}
    if tool.credential:
        cred = settings.http_tool_credentials.get(tool.credential)
        if not cred or not cred.get("header") or "value" not in cred:
            raise HttpToolError(f"credential '{tool.credential}' is not configured on the server")
        headers[cred["header"]] = cred["value"]
    rest = {k: v for k, v in rest.items() if v is not None}
    kwargs = {"params": rest} if tool.method == "GET" else {"json": rest}
    seconds = tool.timeout_s if timeout_s is None else timeout_s
    try:
        status, response_headers, text, truncated = send(
            tool.method, url, headers, seconds, settings.http_tools_allow_private, tool.max_response_bytes, **kwargs)
    except (TimeoutError, httpx.TimeoutException):
        raise HttpToolError(f"the service did not answer within {seconds:.3g} seconds") from None
    except httpx.HTTPError as exc:
        raise HttpToolError(f"could not reach the service: {type(exc).__name__}: {exc}") from None
    if 300 <= status < 400:
        raise HttpToolError(
            f"the service answered with a redirect (HTTP {status}) to "
            f"{response_headers.get('location', '?')}; redirects are not followed"
        )
    if status >= 400:
        raise HttpToolError(f"the service answered HTTP {status}: {text[:ERROR_SNIPPET]}")
    if truncated:
        text += f"\n[truncated: the response was longer than {tool.max_response_bytes} bytes]"
    return text


def post_json(url: str, payload: dict, settings: Settings, timeout_s: float = 10.0, *, secret: str | None = None,
              headers: dict[str, str] | None = None) -> int:
    """POST ``payload`` as JSON signed with ``secret`` (default ``settings.webhook_secret``; ``sign``), with extra
    ``headers``; returns the status code of a 2xx answer, else raises ``HttpToolError``. The URL gets the address
    guard of HTTP tools: the payload carries customer data."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {**(headers or {}), "User-Agent": USER_AGENT, "Content-Type": "application/json",
               TIMESTAMP_HEADER: str(timestamp),
               SIGNATURE_HEADER: sign(secret or settings.webhook_secret or "", timestamp, body)}
    try:
        status, _, text, _ = send("POST", url, headers, timeout_s, settings.http_tools_allow_private, ERROR_SNIPPET,
                                  content=body)
    except (TimeoutError, httpx.TimeoutException):
        raise HttpToolError(f"no answer within {timeout_s:g} seconds") from None
    except httpx.HTTPError as exc:
        raise HttpToolError(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= status < 300:
        raise HttpToolError(f"HTTP {status}: {text[:ERROR_SNIPPET]}", status)
    return status


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Atende-Signature`` of a webhook: ``sha256=`` + hex HMAC-SHA256 of ``f"{timestamp}."`` + body.

    The receiver recomputes it over the raw body with the shared secret, compares in constant time
    and refuses old timestamps (a replay)."""
    return "sha256=" + signing.sign(secret, f"{timestamp}.", body).hex()


def fill_url(template: str, arguments: dict, bound: dict[str, str]) -> tuple[str, dict]:
    """Fill ``{name}`` placeholders from the model's ``arguments`` and ``{{name}}`` ones from ``bound``, each
    value as one encoded path segment; returns (url, unused arguments)."""
    names = [param for _, param in PLACEHOLDER.findall(template) if param]
    missing = sorted({n for n in names if arguments.get(n) is None})
    if missing:
        raise HttpToolError(f"missing argument(s) for the URL: {', '.join(missing)}")

    def segment(match) -> str:
        key, param = match.groups()
        if param:
            return path_segment(param, arguments[param])
        if bound.get(key) is None:
            raise HttpToolError(f"no value for {{{{{key}}}}} in this conversation")
        return path_segment(key, bound[key])

    url = PLACEHOLDER.sub(segment, template)
    return url, {k: v for k, v in arguments.items() if k not in names}


def path_segment(name: str, value) -> str:
    """``value`` percent-encoded as one path segment; raises if it would change the path."""
    text = _as_text(value)
    if text in ("", ".", "..") or "/" in text or "\\" in text:
        raise HttpToolError(
            f"{name} {json.dumps(text)[:60]} cannot go in the URL: a value must not be empty, '.' or '..' "
            "and must not contain '/' or '\\'")
    return quote(text, safe="")


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def send(method: str, url: str, headers: dict, seconds: float, allow_private: bool, limit: int,
         **kwargs) -> tuple[int, httpx.Headers, str, bool]:
    """One guarded request (``core.outbound.fetch``). Returns (status, headers, text cut at ``limit`` bytes,
    truncated); raises ``TimeoutError``, ``httpx.HTTPError``, ``RefusedAddress`` (a URL the guard refuses) or
    ``HttpToolError`` (a host name that does not resolve now: it may later)."""
    try:
        response = fetch(method, url, headers, seconds, allow_private, limit, **kwargs)
    except Unresolvable as exc:
        raise HttpToolError(str(exc)) from None
    except OutboundRefused as exc:
        raise RefusedAddress(str(exc)) from None
    return response.status, response.headers, response.text(), response.truncated
