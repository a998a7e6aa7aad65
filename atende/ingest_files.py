"""Ingest files and folders from disk into an assistant's knowledge base (the CLI's ``kb ingest``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingest.pipeline import run_job
from kb import registry
from kb.errors import InvalidUpload
from runtime.services import Services


@dataclass
class FileResult:
    name: str
    status: str  # ready | unchanged | failed
    chunks: int = 0
    version: int | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def symbol(self) -> str:
        return {"ready": "✓", "unchanged": "=", "failed": "✗"}[self.status]

    @property
    def summary(self) -> str:
        if self.status == "ready":
            return f"{self.chunks} chunks (version {self.version}, {self.seconds:.1f}s)"
        if self.status == "unchanged":
            return f"unchanged (version {self.version}, nothing embedded)"
        return f"failed: {self.error}"


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files given, plus the files under folders given (hidden files and folders skipped)."""
    out = []
    for p in paths:
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file() and not any(x.startswith(".") for x in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


def ingest_paths(services: Services, assistant_ref: str, paths: list[Path], progress: bool = False) -> list[FileResult]:
    """Upload every file, then ingest them in this process; never stops at a bad file.

    Jobs run ``settings.ingest_parallelism`` at a time, so one file is parsed while another is
    embedded (parsing is Python, embedding mostly native code: they overlap well on 2 cores).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    files = expand_paths(paths)
    queued = [_upload(services, assistant_ref, p) for p in files]
    with ThreadPoolExecutor(max_workers=max(1, services.settings.ingest_parallelism)) as pool:
        futures = [pool.submit(_finish, services, item) if not isinstance(item, FileResult) else None for item in queued]
        results = []
        for item, future in tqdm(list(zip(queued, futures, strict=True)), unit="file", disable=not progress,
                                 leave=False):
            results.append(item if future is None else future.result())
    return results


def _upload(services: Services, assistant_ref: str, path: Path) -> FileResult | tuple[str, str, str]:
    """Register the upload; a FileResult when there is nothing to run, else (name, job id, document id)."""
    with services.session() as session:
        kb = registry.get_assistant(session, assistant_ref).knowledge_base
        try:
            data = path.read_bytes()
            upload = registry.register_upload(session, services.blobs, kb, path.name, data, services.settings.max_upload_bytes)
        except (InvalidUpload, OSError) as exc:
            return FileResult(path.name, "failed", error=str(exc))
        session.commit()
        if upload.job is None and upload.document.status == "failed":
            return FileResult(path.name, "failed", error=f"{upload.document.error} (same content as before)")
        if upload.job is None:
            return FileResult(path.name, "unchanged", version=upload.document.current_version)
        return path.name, upload.job.id, upload.document.id


def _finish(services: Services, queued: tuple[str, str, str]) -> FileResult:
    name, job_id, doc_id = queued
    job = run_job(services, job_id)
    if job.status != "ready":
        return FileResult(name, "failed", error=job.error)
    with services.session() as session:
        doc = registry.get_document(session, doc_id)
        return FileResult(name, "ready", chunks=job.chunks_total, version=doc.current_version,
                          seconds=job.timings.get("total_s", 0.0))
