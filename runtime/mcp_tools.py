"""Tools from MCP servers, over streamable HTTP with the official ``mcp`` SDK (its one home here).

An assistant names its servers in ``AssistantConfig.mcp_servers``, each with an allow-list of tool names: only
those are offered to the model, with the description and input schema the server lists (listed once per
``LISTING_TTL_S`` per process; a server that cannot be listed leaves its tools out of the turn, logged). A call
opens a session, calls the tool and closes, all within the server's ``timeout_s`` and what is left of the turn's
deadline; its arguments and result are logged with the turn like any tool call (``runtime.models.ToolCallRecord``).

The SDK's HTTP client (httpx2) gets the address guard of HTTP tools (``runtime.http_tools``): every request's host
is resolved and must be public (unless ``http_tools_allow_private``), and the connection is pinned to the checked
address; the SDK follows no redirect off the endpoint's origin. A credential of ``ATENDE_HTTP_TOOL_CREDENTIALS``
goes as a header with every request.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from core.outbound import OutboundRefused, Unresolvable, resolve_public
from core.settings import Settings
from runtime.config import McpServer
from runtime.http_tools import HttpToolError, RefusedAddress

log = logging.getLogger(__name__)

LISTING_TTL_S = 300.0  # a server's tools are listed again after this long (a changed description or schema)
MAX_RESULT_CHARS = 16_000  # like an HTTP tool's default response limit
_listings: dict[tuple, tuple[float, list[McpTool]]] = {}
_listings_lock = threading.Lock()


@dataclass(frozen=True)
class McpTool:
    """One allowed tool of a server, as the server lists it."""

    name: str
    description: str
    input_schema: dict


class _GuardedTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport, each request's host checked public and the connection pinned to the checked address (the
    Host header and the TLS name stay the host's), as ``runtime.http_tools`` does for HTTP tools."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._allow_private = allow_private

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https") or not url.host:
            raise RefusedAddress("only http:// and https:// URLs with a host are allowed")
        if not self._allow_private:
            try:
                address = await resolve_public(url.host, url.port or (443 if url.scheme == "https" else 80))
            except Unresolvable as exc:
                raise HttpToolError(str(exc)) from None
            except OutboundRefused as exc:
                raise RefusedAddress(str(exc)) from None
            request.headers["Host"] = url.netloc.decode("ascii")
            request.extensions = {**request.extensions, "sni_hostname": url.host}
            request.url = url.copy_with(host=address)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _headers(server: McpServer, settings: Settings) -> dict[str, str]:
    if not server.credential:
        return {}
    cred = settings.http_tool_credentials.get(server.credential)
    if not cred or not cred.get("header") or "value" not in cred:
        raise HttpToolError(f"credential '{server.credential}' is not configured on the server")
    return {cred["header"]: cred["value"]}


def _run(server: McpServer, settings: Settings, seconds: float, work) -> object:
    """Open a session with ``server``, run ``work(client)`` and close, all within ``seconds``; failures become
    ``HttpToolError`` saying what went wrong (never a secret)."""

    async def session():
        with anyio.fail_after(seconds):
            http = httpx2.AsyncClient(transport=_GuardedTransport(settings.http_tools_allow_private),
                                      headers=_headers(server, settings), timeout=seconds, follow_redirects=False,
                                      trust_env=False)
            async with http, Client(streamable_http_client(server.url, http_client=http),
                                    read_timeout_seconds=seconds, cache=None) as client:
                return await work(client)

    try:
        return anyio.run(session)
    except HttpToolError:
        raise
    except TimeoutError:
        raise HttpToolError(f"the MCP server {server.name} did not answer within {seconds:.3g} seconds") from None
    except BaseException as exc:  # the SDK's task groups raise groups: the first cause tells the story
        cause = _first_cause(exc)
        if isinstance(cause, HttpToolError):
            raise cause from None
        if not isinstance(cause, Exception):
            raise
        raise HttpToolError(f"the MCP server {server.name} failed: {type(cause).__name__}: {cause}"[:500]) from None


def _first_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def list_tools(server: McpServer, settings: Settings, seconds: float) -> list[McpTool]:
    """The server's allowed tools (cached for ``LISTING_TTL_S``); raises ``HttpToolError``."""
    key = (server.url, server.credential, tuple(server.tools), settings.http_tools_allow_private)
    with _listings_lock:
        cached = _listings.get(key)
    if cached is not None and time.monotonic() - cached[0] < LISTING_TTL_S:
        return cached[1]

    async def listing(client: Client) -> list[McpTool]:
        result = await client.list_tools()
        return [McpTool(t.name, t.description or "", dict(t.input_schema or {})) for t in result.tools
                if t.name in server.tools]

    tools = _run(server, settings, seconds, listing)
    assert isinstance(tools, list)
    missing = sorted(set(server.tools) - {t.name for t in tools})
    if missing:
        log.warning("MCP server %s does not list the allowed tool(s) %s", server.name, ", ".join(missing))
    with _listings_lock:
        _listings[key] = (time.monotonic(), tools)
    return tools


def call_tool(server: McpServer, name: str, arguments: dict, settings: Settings, seconds: float) -> str:
    """Call the allowed tool ``name`` with ``arguments``; its result as text (its text parts, or its structured
    content as JSON), cut at ``MAX_RESULT_CHARS``. Raises ``HttpToolError`` (a tool's own error included)."""
    if name not in server.tools:
        raise HttpToolError(f"the tool {name} of MCP server {server.name} is not allowed")

    async def calling(client: Client):
        return await client.call_tool(name, arguments)

    started = time.perf_counter()
    result = _run(server, settings, seconds, calling)
    texts = [part.text for part in getattr(result, "content", None) or [] if getattr(part, "text", None)]
    text = "\n".join(texts) or json.dumps(getattr(result, "structured_content", None), ensure_ascii=False)
    # its arguments and result are the customer's data: logged with the turn (kept, erased as it is), not here
    log.info("MCP tool %s of %s called in %.0f ms: %d characters back%s", name, server.name,
             (time.perf_counter() - started) * 1000, len(text), " (an error)" if getattr(result, "is_error", False)
             else "")
    if getattr(result, "is_error", False):
        raise HttpToolError(f"the tool {name} failed: {text}"[:500])
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[truncated: the result was longer than {MAX_RESULT_CHARS} characters]"
    return text
