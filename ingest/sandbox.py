"""Parsing of untrusted files in a child process, within a wall-clock limit, a memory limit and, for
ZIP-based formats (DOCX, PPTX, XLSX), a bound on their inflated size and compression ratio.

The process that asks holds threads, database connections and the embedding model, so it never
forks itself: children come from a ``forkserver``, a fresh interpreter started on first use that
imports and warms every parser once (``ingest.warm_parsers``, ~10 s). Each parse forks a warm child
of it, which caps its own address space (RLIMIT_AS) before it reads the file and is killed when the
time is up; a file that hits a limit raises ``ParseLimitExceeded``, which fails its job. A child
starts like a spawned one (it imports the main script again: ~25 ms for ``atende``); start, COW and
exit cost ~80-160 ms per document here (``python -m benchmarks.parse_isolation``).
"""
from __future__ import annotations

import functools
import io
import multiprocessing
import resource
import signal
import zipfile
from dataclasses import dataclass
from multiprocessing.connection import Connection

from ingest.errors import IngestError, ParseError, ParseLimitExceeded
from ingest.parse import Element, parse_document

ARCHIVE_TYPES = {"docx", "pptx", "xlsx"}
MIB = 1024 * 1024


@dataclass(frozen=True)
class ParseLimits:
    """What one parse may use (settings ``parse_timeout_s``, ``parse_memory_mb``,
    ``max_inflated_mb``, ``max_compression_ratio``)."""

    timeout_s: float
    memory_mb: float  # on top of what the warm parsers already map
    max_inflated_mb: float
    max_compression_ratio: float

    @classmethod
    def from_settings(cls, settings) -> ParseLimits:
        return cls(settings.parse_timeout_s, settings.parse_memory_mb, settings.max_inflated_mb,
                   settings.max_compression_ratio)


def parse_isolated(data: bytes, file_type: str, limits: ParseLimits) -> list[Element]:
    """Parse a file in a child process within ``limits``: returns what ``parse_document`` returns and
    raises what it raises, or ``ParseLimitExceeded`` when the file needs more than the limits allow."""
    ctx = _context()
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_parse_in_child, args=(writer, data, file_type, limits), daemon=True,
                        name=f"atende-parse-{file_type}")
    try:
        child.start()  # the first start waits for the forkserver to warm up; the time limit starts after
        writer.close()  # the child holds the only writer left, so its death reads as EOF
        if not reader.poll(limits.timeout_s):
            raise ParseLimitExceeded(
                f"parsing this {file_type.upper()} file took longer than the limit of {limits.timeout_s:g} s "
                "(ATENDE_PARSE_TIMEOUT_S)"
            )
        try:
            outcome, value = reader.recv()
        except EOFError:
            child.join()
            raise ParseError(_died_message(file_type, child.exitcode, limits)) from None
    finally:
        writer.close()
        reader.close()
        if child.is_alive():  # only a live one: the forkserver reaps an exited child, and its pid may be reused
            child.kill()
        if child.pid is not None:
            child.join()
    if outcome == "elements":
        return value
    if outcome == "error":
        raise value
    raise RuntimeError(f"the parser failed: {value}")


def check_archive(data: bytes, file_type: str, limits: ParseLimits) -> None:
    """Refuse a ZIP-based file whose members would inflate past ``max_inflated_mb`` in all, or past
    ``max_compression_ratio`` times the file's own size, from the sizes its central directory declares.

    Those declared sizes are a real bound on what the parsers inflate: Python's ``zipfile`` (under
    python-docx, python-pptx and openpyxl) never inflates a member past its declared size (a member
    that holds more fails its CRC check), and entries that share compressed data (overlapping zip
    bombs) each count in full here. The child's memory limit backs this up.
    """
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except zipfile.BadZipFile as exc:
        raise ParseError(f"could not read this {file_type.upper()} file: BadZipFile: {exc}") from exc
    inflated = sum(m.file_size for m in members)
    kind = f"this {file_type.upper()} file"
    if inflated > limits.max_inflated_mb * MIB:
        raise ParseLimitExceeded(
            f"{kind} inflates to {inflated / MIB:.1f} MiB, over the limit of {limits.max_inflated_mb:g} MiB "
            "(ATENDE_MAX_INFLATED_MB); it may be a decompression bomb"
        )
    ratio = inflated / len(data)
    if ratio > limits.max_compression_ratio:
        raise ParseLimitExceeded(
            f"{kind} is compressed {ratio:.0f}:1 ({len(data) / MIB:.2f} MiB inflating to {inflated / MIB:.1f} MiB), "
            f"over the limit of {limits.max_compression_ratio:g}:1 (ATENDE_MAX_COMPRESSION_RATIO); "
            "it may be a decompression bomb"
        )


@functools.cache
def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ingest.warm_parsers"])
    return ctx


def start_parsers() -> None:
    """Start the forkserver now, with the parsers warmed in it (``ingest.warm_parsers``); otherwise the first
    parse starts it and waits for the warm-up."""
    import multiprocessing.forkserver

    _context()  # sets the forkserver's preload
    multiprocessing.forkserver.ensure_running()


def _parse_in_child(writer: Connection, data: bytes, file_type: str, limits: ParseLimits) -> None:
    """The child's side: cap its memory, check archives, parse, and send the outcome back."""
    baseline = _peak_address_space()
    _limit_memory(limits.memory_mb)
    try:
        if file_type in ARCHIVE_TYPES:
            check_archive(data, file_type, limits)
        outcome = ("elements", parse_document(data, file_type))
    except MemoryError:
        outcome = ("error", ParseLimitExceeded(
            f"parsing this {file_type.upper()} file needs more memory than the limit of {limits.memory_mb:g} MiB "
            "(ATENDE_PARSE_MEMORY_MB)"
        ))
    except ParseError as exc:
        outcome = ("error", _near_memory_cap(exc, file_type, limits, _peak_address_space() - baseline))
    except IngestError as exc:
        outcome = ("error", exc)
    except Exception as exc:  # a fault of ours, not of the file: the job reports an internal error
        outcome = ("failed", f"{type(exc).__name__}: {exc}")
    writer.send(outcome)
    writer.close()


def _near_memory_cap(exc: ParseError, file_type: str, limits: ParseLimits, used: int) -> ParseError:
    """C parsers that meet a refused allocation report an error of their own (libxml2 under lxml: an
    "unknown error", at the very cap); a parse that failed after using more than half of its allowance
    (growing buffers double) is told as such, with the parser's own words."""
    if isinstance(exc, ParseLimitExceeded) or used < limits.memory_mb * MIB / 2:
        return exc
    return ParseLimitExceeded(
        f"parsing this {file_type.upper()} file came close to the memory limit of {limits.memory_mb:g} MiB "
        f"(ATENDE_PARSE_MEMORY_MB), using {used / MIB:.0f} MiB, and then failed: {exc}"
    )


def _limit_memory(memory_mb: float) -> None:
    """Cap this process's address space at what it maps already (the warm parsers, ~1.9 GB of
    mostly shared libraries) plus ``memory_mb``; no core dump when a parser aborts at the cap."""
    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    cap = mapped + int(memory_mb * MIB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _peak_address_space() -> int:
    with open("/proc/self/status") as status:
        peak_kb = next(line.split()[1] for line in status if line.startswith("VmPeak:"))
    return int(peak_kb) * 1024


def _died_message(file_type: str, exitcode: int | None, limits: ParseLimits) -> str:
    how = f"signal {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    return (
        f"the parser stopped on this {file_type.upper()} file without a result ({how}); the file may be "
        f"malformed, or need more memory than the limit of {limits.memory_mb:g} MiB (ATENDE_PARSE_MEMORY_MB)"
    )
