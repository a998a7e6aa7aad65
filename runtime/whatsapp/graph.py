"""Sending messages through Meta's Graph API (WhatsApp Cloud API ``/messages``).

A send is retried only when it certainly did not reach Meta's message handling: the connection
could not be made (refused, DNS, connect timeout), or Meta said so (HTTP 429, HTTP 5xx). Once the
request may have been read and no answer came (read timeout, dropped connection), the outcome is
``"unknown"`` and it is not retried, since a retry could deliver the message twice; the status
webhook settles it later. The access token goes only into the ``Authorization`` header and is
never logged.

A failure that may heal (no connection, HTTP 429 or 5xx, or one of Meta's temporary or rate-limit error
codes, ``TEMPORARY_CODES``, whatever the HTTP status) is ``retryable``: the outbox
(``runtime.whatsapp.outbound``) tries it again later, after these few quick attempts; any other failure
(an invalid recipient, a bad token, a closed window...) is final.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import httpx

log = logging.getLogger(__name__)

USER_AGENT = "atende-whatsapp/1"
MAX_RETRY_AFTER_S = 30.0
CONNECT_TIMEOUT_S = 5.0
# Business-scoped user id (BSUID): country code, a dot, then letters/digits, e.g. US.13491208655302741918
# or a parent BSUID such as US.ENT.11815799212886844830. Phone numbers (wa_id) are digits.
_BSUID = re.compile(r"^[A-Z]{2}\.[A-Za-z0-9.]+$")
_META_CODE_PREFIX = re.compile(r"^\(#\d+\)\s*")
_URL = re.compile(r"https?://", re.IGNORECASE)

SendStatus = Literal["accepted", "failed", "unknown"]
# Meta's codes of failures that pass: unknown/temporary errors (1, 2, 131000, 131016) and rate limits (4 app,
# 80007 account, 130429 throughput, 131048 spam, 131056 pair); they come with HTTP 4xx as well as 5xx
TEMPORARY_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056})


class GraphSender(Protocol):
    """What a send needs of a business number (``WhatsAppSender`` fits)."""

    phone_number_id: str
    access_token: str
    graph_version: str


@dataclass(frozen=True)
class SendResult:
    """How a send ended. ``accepted``: Meta took it (``wamid`` set); ``failed``: it certainly was
    not sent; ``unknown``: it may have been sent, wait for the status webhook. A ``failed`` send is
    ``retryable`` when it may succeed later (see the module docstring)."""

    status: SendStatus
    wamid: str | None
    error_code: int | None
    error_title: str | None
    attempts: int
    http_status: int | None
    retryable: bool = False


class _Retry(Exception):
    """An attempt that certainly was not accepted and may be tried again."""

    def __init__(self, result: SendResult, wait_s: float | None = None) -> None:
        super().__init__(result.error_title)
        self.result = result
        self.wait_s = wait_s


class GraphClient:
    """Posts messages to ``{base_url}/{graph_version}/{phone_number_id}/messages``. Thread-safe."""

    def __init__(self, base_url: str, timeout_s: float = 15, attempts: int = 3, backoff_s: float = 0.5) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.attempts = attempts
        self.backoff_s = backoff_s
        # a connection that cannot be made in a few seconds will not be made; the answer may take longer
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                                  headers={"User-Agent": USER_AGENT})

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ message kinds

    def send_text(self, sender: GraphSender, to: str, text: str, reply_to: str | None = None,
                  callback_data: str | None = None) -> SendResult:
        """Send ``text`` (already rendered for WhatsApp, at most 4096 characters); quote ``reply_to`` if given.

        ``callback_data`` (our message id) comes back in every status webhook of the message, so a send
        whose answer was lost (timeout) is still matched when Meta reports on it."""
        payload = {
            **recipient_fields(to),
            "type": "text",
            "text": {"body": text, "preview_url": bool(_URL.search(text))},
        }
        if reply_to:
            payload["context"] = {"message_id": reply_to}
        if callback_data:
            payload["biz_opaque_callback_data"] = callback_data
        return self.send(sender, payload)

    def send_interactive(self, sender: GraphSender, to: str, interactive: dict,
                         callback_data: str | None = None) -> SendResult:
        """Send reply buttons or a list message: ``interactive`` is Meta's ``interactive`` object (built within
        Meta's limits by ``runtime.whatsapp.interactive``)."""
        payload = {**recipient_fields(to), "type": "interactive", "interactive": interactive}
        if callback_data:
            payload["biz_opaque_callback_data"] = callback_data
        return self.send(sender, payload)

    def send_file(self, sender: GraphSender, to: str, kind: str, data: bytes, mime_type: str, filename: str,
                  caption: str | None = None, callback_data: str | None = None) -> SendResult:
        """Upload ``data`` (``POST /{phone number id}/media``) and send it as a ``kind`` message ("document" or
        "image") with its ``caption`` (a document also with its ``filename``). An upload that fails is a failed
        send that nothing reached the customer by (retryable as the failure is: no connection, 429, 5xx); uploading
        again on a later attempt is harmless (an unused media id expires at Meta)."""
        url = f"{self.base_url}/{sender.graph_version}/{sender.phone_number_id}/media"
        headers = {"Authorization": f"Bearer {sender.access_token}"}
        try:
            response = self._http.post(url, headers=headers, data={"messaging_product": "whatsapp", "type": mime_type},
                                       files={"file": (filename, data, mime_type)})
        except httpx.TransportError as exc:  # an upload reaches nobody: whatever happened, it may be tried again
            return _scrub(_result("failed", 1, title=f"media upload failed: {_describe(exc)}", retryable=True),
                          sender.access_token)
        try:
            media_id = response.json().get("id") if response.status_code < 300 else None
        except (ValueError, AttributeError):
            media_id = None
        if not media_id:
            try:
                failed = _interpret(response, 1)
            except _Retry as retry:  # 429, 5xx, Meta's temporary codes
                failed = retry.result
            result = replace(failed, status="failed", retryable=failed.retryable or failed.status == "unknown",
                             error_title=f"media upload: {failed.error_title}")
            return _scrub(result, sender.access_token)
        body: dict = {"id": str(media_id)}
        if caption:
            body["caption"] = caption[:1024]
        if kind == "document":
            body["filename"] = filename[:240]
        extra = {"biz_opaque_callback_data": callback_data} if callback_data else {}
        return self.send(sender, {**recipient_fields(to), "type": kind, kind: body, **extra})

    def send_template(self, sender: GraphSender, to: str, name: str, language: str,
                      parameters: list[str], callback_data: str | None = None) -> SendResult:
        """Send an approved template, filling its body's ``{{1}}``, ``{{2}}`` ... with ``parameters``."""
        template: dict = {"name": name, "language": {"code": language}}
        if parameters:
            template["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": value} for value in parameters]}
            ]
        extra = {"biz_opaque_callback_data": callback_data} if callback_data else {}
        return self.send(sender, {**recipient_fields(to), "type": "template", "template": template, **extra})

    def mark_read(self, sender: GraphSender, message_id: str, *, typing: bool = False,
                  timeout_s: float = 2.0) -> bool:
        """Mark the customer's message ``message_id`` read and, if ``typing``, show the typing indicator (Meta
        shows it until we reply or for 25 s; it exists only with a read receipt). One attempt within
        ``timeout_s``, never retried: a receipt is a courtesy, late is as good as never. Whether Meta took it;
        a failure is logged."""
        url = f"{self.base_url}/{sender.graph_version}/{sender.phone_number_id}/messages"
        body: dict = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
        if typing:
            body["typing_indicator"] = {"type": "text"}
        headers = {"Authorization": f"Bearer {sender.access_token}"}
        try:
            response = self._http.post(url, json=body, headers=headers, timeout=timeout_s)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            log.warning("WhatsApp read receipt for number %s not sent: %s", sender.phone_number_id,
                        _scrubbed(_describe(exc), sender.access_token))
            return False
        if 200 <= response.status_code < 300:
            return True
        try:
            answer = response.json()
        except ValueError:
            answer = None
        code, title = _meta_error(answer, response)
        log.warning("WhatsApp read receipt for number %s refused: %s (code %s)", sender.phone_number_id,
                    _scrubbed(title, sender.access_token), code)
        return False

    # ------------------------------------------------------------------ the request

    def send(self, sender: GraphSender, payload: dict) -> SendResult:
        """POST ``payload`` (``messaging_product`` is added), retrying only what certainly was not sent."""
        url = f"{self.base_url}/{sender.graph_version}/{sender.phone_number_id}/messages"
        body = {"messaging_product": "whatsapp", **payload}
        headers = {"Authorization": f"Bearer {sender.access_token}"}
        for attempt in range(1, self.attempts + 1):
            try:
                result = self._attempt(url, body, headers, attempt)
            except _Retry as retry:
                result = _scrub(retry.result, sender.access_token)
                if attempt < self.attempts:
                    wait = retry.wait_s if retry.wait_s is not None else self.backoff_s * 2 ** (attempt - 1)
                    log.warning("WhatsApp send to number %s not accepted (%s); attempt %d of %d in %.2fs",
                                sender.phone_number_id, result.error_title, attempt + 1, self.attempts, wait)
                    time.sleep(wait)
                    continue
            result = _scrub(result, sender.access_token)
            if result.status != "accepted":
                log.warning("WhatsApp send to number %s %s after %d attempt(s): %s (code %s)",
                            sender.phone_number_id, result.status, attempt, result.error_title, result.error_code)
            return result
        raise AssertionError("unreachable")  # the last attempt always returns

    def _attempt(self, url: str, body: dict, headers: dict, attempt: int) -> SendResult:
        try:
            response = self._http.post(url, json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # nothing was sent: refused, unresolvable, or no connection in time
            raise _Retry(_result("failed", attempt, title=f"could not connect: {_describe(exc)}",
                                 retryable=True)) from None
        except httpx.UnsupportedProtocol as exc:
            return _result("failed", attempt, title=f"invalid Graph API URL: {exc}")
        except httpx.LocalProtocolError:
            # nothing was sent; the message would quote the offending header, i.e. the token
            return _result("failed", attempt, title="the request could not be built (is the access token valid?)")
        except httpx.TransportError as exc:
            # the request went out (at least partly) and no answer came: Meta may have taken it
            return _result("unknown", attempt, title=f"no answer from the Graph API: {_describe(exc)}")
        return _interpret(response, attempt)


    # ------------------------------------------------------------------ media customers send (downloads)

    def media_info(self, sender: GraphSender, media_id: str) -> MediaInfo:
        """Ask ``GET /{version}/{media_id}`` where the file is: a download URL valid a few minutes (ask again
        on every attempt), its MIME type, sha256 and size as Meta declares them. Raises ``MediaFetchError``."""
        url = f"{self.base_url}/{sender.graph_version}/{media_id}"
        response = self._get(sender, url, stream=False)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("url"), str) or not _URL.match(answer["url"]):
            raise MediaFetchError(f"media {media_id}: no download URL in the Graph API's answer", retryable=True)
        size = answer.get("file_size")
        return MediaInfo(url=answer["url"], mime_type=_optional_str(answer.get("mime_type")),
                         sha256=_optional_str(answer.get("sha256")),
                         file_size=int(size) if isinstance(size, (int, str)) and str(size).isdigit() else None)

    def download_media(self, sender: GraphSender, url: str, max_bytes: int, timeout_s: float) -> bytes:
        """The bytes at ``url`` (from ``media_info``), with the sender's token; never more than ``max_bytes`` read
        whatever the answer's Content-Length says (``MediaTooLarge``). Raises ``MediaFetchError``."""
        deadline = time.monotonic() + timeout_s
        response = self._get(sender, url, stream=True)
        try:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise MediaTooLarge(f"the file is {int(declared):,} bytes, over the limit of {max_bytes:,}")
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise MediaTooLarge(f"the file is over the limit of {max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise MediaFetchError(f"the download took over {timeout_s:g}s", retryable=True)
                chunks.append(chunk)
        except httpx.TransportError as exc:
            raise MediaFetchError(f"the download broke off: {_describe(exc)}", retryable=True) from None
        finally:
            response.close()
        return b"".join(chunks)

    def _get(self, sender: GraphSender, url: str, *, stream: bool) -> httpx.Response:
        """One GET with the sender's token: a response of status 2xx (to close when ``stream``), else
        ``MediaFetchError`` (retryable as a send's failure would be, or on a read timeout: a GET may be repeated)."""
        headers = {"Authorization": f"Bearer {sender.access_token}"}
        try:
            response = self._http.send(self._http.build_request("GET", url, headers=headers), stream=stream)
        except httpx.LocalProtocolError:
            raise MediaFetchError("the request could not be built (is the access token valid?)") from None
        except httpx.UnsupportedProtocol as exc:
            raise MediaFetchError(f"invalid media URL: {exc}") from None
        except httpx.TransportError as exc:
            raise MediaFetchError(_scrubbed(f"no answer from {url.split('?')[0]}: {_describe(exc)}",
                                            sender.access_token), retryable=True) from None
        if 200 <= response.status_code < 300:
            return response
        if stream:
            response.read()
            response.close()
        try:
            answer = response.json()
        except ValueError:
            answer = None
        code, title = _meta_error(answer, response)
        status = response.status_code
        raise MediaFetchError(_scrubbed(f"HTTP {status}: {title}", sender.access_token), code=code, http_status=status,
                              retryable=status == 429 or status >= 500 or code in TEMPORARY_CODES)


@dataclass(frozen=True)
class MediaInfo:
    """Where a media file is and what Meta says it is (``GET /{version}/{media_id}``)."""

    url: str
    mime_type: str | None
    sha256: str | None
    file_size: int | None


class MediaFetchError(Exception):
    """A media file could not be fetched; ``retryable`` when a later attempt may succeed. The text never holds
    the access token."""

    def __init__(self, message: str, *, retryable: bool = False, code: int | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.retryable, self.code, self.http_status = retryable, code, http_status


class MediaTooLarge(MediaFetchError):
    """The file is over the size limit of its kind (stopped while reading: never retried)."""


def _optional_str(value) -> str | None:
    return str(value) if isinstance(value, (str, int)) and str(value) else None


def _scrubbed(text: str, token: str) -> str:
    return text.replace(token, "[token]") if token else text


def recipient_fields(to: str) -> dict:
    """Addressing of a one-to-one send: a phone number goes in ``to``, a business-scoped user id
    (BSUID, for users who hide their number behind a username) in ``recipient``."""
    to = to.strip()
    key = "recipient" if _BSUID.match(to) else "to"
    return {"recipient_type": "individual", key: to}


def _interpret(response: httpx.Response, attempt: int) -> SendResult:
    status = response.status_code
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if 200 <= status < 300:
        messages = answer.get("messages") if isinstance(answer, dict) else None
        wamid = messages[0].get("id") if messages and isinstance(messages[0], dict) else None
        if wamid:
            return _result("accepted", attempt, wamid=wamid, http_status=status)
        return _result("unknown", attempt, http_status=status,
                       title=f"HTTP {status} without a message id: {response.text[:200]}")
    code, title = _meta_error(answer, response)
    retryable = status == 429 or status >= 500 or code in TEMPORARY_CODES
    result = _result("failed", attempt, code=code, title=title, http_status=status, retryable=retryable)
    if status == 429 or status >= 500:
        raise _Retry(result, _retry_after(response))
    return result


def _meta_error(answer, response: httpx.Response) -> tuple[int | None, str]:
    """Meta's error code and a readable title (message, then details) from an error answer."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return None, f"HTTP {response.status_code}: {response.text[:200]}"
    message = _META_CODE_PREFIX.sub("", str(error.get("error_user_title") or error.get("message") or "")).strip()
    details = (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
    title = message or f"HTTP {response.status_code}"
    if details and details != message:
        title = f"{title}: {details}"
    code = error.get("code")
    return (code if isinstance(code, int) else None), title


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(max(float(response.headers["Retry-After"]), 0.0), MAX_RETRY_AFTER_S)
    except (KeyError, ValueError):
        return None


def _result(status: SendStatus, attempts: int, *, wamid: str | None = None, code: int | None = None,
            title: str | None = None, http_status: int | None = None, retryable: bool = False) -> SendResult:
    return SendResult(status=status, wamid=wamid, error_code=code, error_title=title,
                      attempts=attempts, http_status=http_status, retryable=retryable)


def _scrub(result: SendResult, token: str) -> SendResult:
    """Make sure no error text quotes the access token."""
    if token and result.error_title and token in result.error_title:
        return replace(result, error_title=result.error_title.replace(token, "[token]"))
    return result


def _scrubbed(text: str, token: str) -> str:
    return text.replace(token, "[token]") if token else text


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
