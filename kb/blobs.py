"""Content-addressed store of uploaded files, so any version can be re-parsed or re-embedded."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path):
        self.root = root

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` (written atomically) and return its sha256."""
        digest = content_hash(data)
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return digest

    def get(self, digest: str) -> bytes:
        return self._path(digest).read_bytes()

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)
