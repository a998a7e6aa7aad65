"""Outbound HTTP: lookups in the customer's own systems (HTTP tools) and event webhooks.

Uses ``httpx`` (as does the WhatsApp Graph client). An HTTP tool's URL is admin-configured but filled with model-chosen
arguments, so every call is guarded against server-side request forgery: the host is resolved
first, every address must be public, and the connection is pinned to the checked address (a DNS
answer cannot change between the check and the connect). Redirects are refused, responses are
read as a stream and cut at ``max_response_bytes``.
"""
from __future__ import annotations

import codecs
import ipaddress
import re
import socket
import time
from urllib.parse import quote

import httpx

from atende.settings import Settings
from runtime.config import HttpTool

USER_AGENT = "atende-http-tool/1"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
ERROR_SNIPPET = 300


class HttpToolError(Exception):
    """An HTTP tool or webhook call failed; the message says why, without secrets."""


def call_http_tool(tool: HttpTool, arguments: dict, settings: Settings) -> str:
    """Call ``tool`` with ``arguments`` and return the response text (cut at the tool's limit)."""
    url, rest = fill_url(tool.url, arguments)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json, text/*;q=0.9, */*;q=0.1"}
    if tool.credential:
        cred = settings.http_tool_credentials.get(tool.credential)
        if not cred or not cred.get("header") or "value" not in cred:
            raise HttpToolError(f"credential '{tool.credential}' is not configured on the server")
        headers[cred["header"]] = cred["value"]
    rest = {k: v for k, v in rest.items() if v is not None}
    kwargs = {"params": rest} if tool.method == "GET" else {"json": rest}
    deadline = time.monotonic() + tool.timeout_s
    try:
        with httpx.Client(timeout=tool.timeout_s, follow_redirects=False, trust_env=False) as client:
            with _stream(client, tool.method, url, headers, settings.http_tools_allow_private, **kwargs) as response:
                text, truncated = _read_limited(response, tool.max_response_bytes, deadline)
    except httpx.TimeoutException:
        raise HttpToolError(f"the service did not answer within {tool.timeout_s:g} seconds") from None
    except httpx.HTTPError as exc:
        raise HttpToolError(f"could not reach the service: {type(exc).__name__}: {exc}") from None
    if 300 <= response.status_code < 400:
        raise HttpToolError(
            f"the service answered with a redirect (HTTP {response.status_code}) to "
            f"{response.headers.get('location', '?')}; redirects are not followed"
        )
    if response.status_code >= 400:
        raise HttpToolError(f"the service answered HTTP {response.status_code}: {text[:ERROR_SNIPPET]}")
    if truncated:
        text += f"\n[truncated: the response was longer than {tool.max_response_bytes} bytes]"
    return text


def post_json(url: str, payload: dict, timeout_s: float = 10.0) -> int:
    """POST ``payload`` as JSON; returns the status code of a 2xx answer, else raises ``HttpToolError``.

    Webhook URLs are set by administrators and their answers are shown to no one, so they are
    not held to the public-address rule of HTTP tools."""
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            response = client.post(url, json=payload, headers={"User-Agent": USER_AGENT})
    except httpx.TimeoutException:
        raise HttpToolError(f"no answer within {timeout_s:g} seconds") from None
    except httpx.HTTPError as exc:
        raise HttpToolError(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= response.status_code < 300:
        raise HttpToolError(f"HTTP {response.status_code}: {response.text[:ERROR_SNIPPET]}")
    return response.status_code


def fill_url(template: str, arguments: dict) -> tuple[str, dict]:
    """Fill ``{name}`` placeholders with URL-encoded arguments; returns (url, unused arguments)."""
    names = _PLACEHOLDER.findall(template)
    missing = sorted({n for n in names if arguments.get(n) is None})
    if missing:
        raise HttpToolError(f"missing argument(s) for the URL: {', '.join(missing)}")
    url = _PLACEHOLDER.sub(lambda m: quote(_as_text(arguments[m.group(1)]), safe=""), template)
    return url, {k: v for k, v in arguments.items() if k not in names}


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------- SSRF guard


def forbidden_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address must not be reached from here (None for a public address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return forbidden_reason(embedded)
    for label, bad in (
        ("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified), ("reserved", ip.is_reserved), ("private", ip.is_private),
        ("non-public", not ip.is_global),
    ):
        if bad:
            return label
    return None


def resolve_public(host: str, port: int) -> str:
    """Resolve ``host``; return an address to connect to, or raise if any address is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise HttpToolError(f"could not resolve the host name '{host}'") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        reason = forbidden_reason(ipaddress.ip_address(address.split("%", 1)[0]))
        if reason:
            raise HttpToolError(f"refused: {host} is a {reason} address ({address}); only public addresses are allowed")
    return addresses[0]


def _stream(client: httpx.Client, method: str, url: str, headers: dict, allow_private: bool, **kwargs):
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise HttpToolError(f"invalid URL: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise HttpToolError("only http:// and https:// URLs with a host are allowed")
    extensions = {}
    if not allow_private:
        address = resolve_public(target.host, target.port or (443 if target.scheme == "https" else 80))
        # connect to the checked address; Host header and TLS name (SNI, certificate) stay the host's
        headers = {**headers, "Host": target.netloc.decode("ascii")}
        extensions["sni_hostname"] = target.host
        target = target.copy_with(host=address)
    return client.stream(method, target, headers=headers, extensions=extensions, **kwargs)


def _read_limited(response: httpx.Response, limit: int, deadline: float) -> tuple[str, bool]:
    """Read at most ``limit`` bytes of the (decoded) body; returns (text, truncated)."""
    chunks, size, truncated = [], 0, False
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            truncated = True
            break
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("response too slow")
    data = b"".join(chunks)[:limit]
    try:
        decoder = codecs.getincrementaldecoder(response.encoding or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # final=False drops a multi-byte character cut in half by the limit
    return decoder.decode(data, final=not truncated), truncated
