"""Outbound HTTP under the address guard: every request atende makes to an address an admin or a model chose.

HTTP tools (``runtime.http_tools``), event webhooks and website sources (``ingest.crawl``) reach URLs that someone
other than the operator configured, so every request is guarded against server-side request forgery: the host is
resolved first, every address must be public, and the connection is pinned to the checked address (a DNS answer
cannot change between the check and the connect). Redirects are never followed here (a caller that follows them
calls again, so each hop is checked); responses are read as a stream and cut at a byte limit.

httpx's timeouts bound each read, and a server dripping its headers a byte at a time resets them forever; each
request therefore runs under one wall-clock deadline (``anyio.fail_after``) covering name resolution, connect,
headers and body.
"""
from __future__ import annotations

import codecs
import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx


class OutboundRefused(Exception):
    """The URL is malformed, its host does not resolve, or it resolves to an address that must not be reached."""


class Unresolvable(OutboundRefused):
    """The host name does not resolve (now: it may later)."""


@dataclass(frozen=True)
class Fetched:
    """One response as read: status, headers, the body's first ``limit`` bytes, whether it was longer."""

    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    encoding: str | None  # from the Content-Type header, when it names one

    def text(self) -> str:
        """The body decoded with its declared charset (UTF-8 if none or unknown); a multi-byte character cut in half
        by the limit is dropped."""
        try:
            decoder = codecs.getincrementaldecoder(self.encoding or "utf-8")(errors="replace")
        except LookupError:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(self.body, final=not self.truncated)


def fetch(method: str, url: str, headers: dict[str, str], seconds: float, allow_private: bool, limit: int,
          **kwargs: Any) -> Fetched:
    """One request under a wall-clock deadline of ``seconds``: resolution, connect, headers and body (at most
    ``limit`` bytes read). ``allow_private`` lets loopback and private addresses through (tests, on-premises
    services). Raises ``TimeoutError``, ``httpx.HTTPError`` or ``OutboundRefused``."""

    async def run() -> Fetched:
        with anyio.fail_after(seconds):
            async with httpx.AsyncClient(timeout=seconds, follow_redirects=False, trust_env=False,
                                         verify=_ssl_context()) as client:
                target, headers_, extensions = await _target(url, headers, allow_private)
                request = client.build_request(method, target, headers=headers_, extensions=extensions, **kwargs)
                response = await client.send(request, stream=True)
                try:
                    body, truncated = await _read_limited(response, limit)
                finally:
                    await response.aclose()
                return Fetched(response.status_code, response.headers, body, truncated, response.charset_encoding)

    return anyio.run(run)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once: loading the CA bundle takes ~38 ms a client here."""
    return httpx.create_ssl_context()


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


async def resolve_public(host: str, port: int) -> str:
    """Resolve ``host``; return an address to connect to, or raise if any address is not public."""
    try:
        # in a worker thread the deadline can abandon (a resolver can take its own time to give up)
        infos = await anyio.to_thread.run_sync(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), abandon_on_cancel=True)
    except (OSError, UnicodeError):
        raise Unresolvable(f"could not resolve the host name '{host}'") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        reason = forbidden_reason(ipaddress.ip_address(address.split("%", 1)[0]))
        if reason:
            raise OutboundRefused(f"refused: {host} is a {reason} address ({address}); only public addresses are allowed")
    return addresses[0]


async def _target(url: str, headers: dict[str, str], allow_private: bool
                  ) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The URL to connect to (pinned to a checked public address unless ``allow_private``), its headers
    and transport extensions."""
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise OutboundRefused(f"invalid URL: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise OutboundRefused("only http:// and https:// URLs with a host are allowed")
    if allow_private:
        return target, headers, {}
    address = await resolve_public(target.host, target.port or (443 if target.scheme == "https" else 80))
    # connect to the checked address; Host header and TLS name (SNI, certificate) stay the host's
    headers = {**headers, "Host": target.netloc.decode("ascii")}
    return target.copy_with(host=address), headers, {"sni_hostname": target.host}


async def _read_limited(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read at most ``limit`` bytes of the (decoded) body; returns (bytes, truncated)."""
    chunks, size, truncated = [], 0, False
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            truncated = True
            break
    return b"".join(chunks)[:limit], truncated
