"""The secrets a data directory generates for itself: created once, owner-only, read by ``Settings``.

A secret the environment leaves unset (admin token, dashboard session key, widget key) is read from
``<home>/secrets.json``; a missing one is generated (32 random bytes) and stored there first. The file is
0600 inside a 0700 directory (an existing data directory is tightened too), so only the account running
atende can read it, and ``atende serve``, ``atende worker`` and ``atende admin-token`` on the same directory
share the same values. Processes starting at once on a fresh directory agree: they take an exclusive lock on
the directory, and the file is replaced whole (written aside, then renamed), so a crash never leaves half of it.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

SECRETS_FILE = "secrets.json"
GENERATED_BYTES = 32  # token_urlsafe(32): 43 characters, 256 bits


class SecretStoreError(RuntimeError):
    """The secrets file cannot be trusted or read (too open permissions, not JSON)."""


def secrets_path(home: Path) -> Path:
    """Where the generated secrets of a data directory live."""
    return home / SECRETS_FILE


def load_or_create_secrets(home: Path, names: Iterable[str]) -> dict[str, str]:
    """The stored value of each secret in ``names``, generating and storing the missing ones."""
    names = list(names)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = secrets_path(home)
    lock = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = _read(path)
        missing = [n for n in names if n not in stored]
        if missing:
            stored.update({n: secrets.token_urlsafe(GENERATED_BYTES) for n in missing})
            _write(home, path, stored)
        return {n: stored[n] for n in names}
    finally:
        os.close(lock)  # releases the lock


def _read(path: Path) -> dict[str, str]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, encoding="utf-8") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise SecretStoreError(f"{path} is readable by other accounts (mode {mode:o}): run `chmod 600 {path}` "
                                   "and consider the secrets in it exposed")
        try:
            stored = json.load(f)
        except ValueError as exc:
            raise SecretStoreError(
                f"{path} is not valid JSON ({exc}); fix it or delete it to generate new secrets") from exc
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        raise SecretStoreError(f"{path} must hold a JSON object of strings")
    return stored


def _write(home: Path, path: Path, stored: dict[str, str]) -> None:
    # the directory also holds the database and the uploaded files: ours alone, unless it is a shared one
    # (another owner's, or sticky like /tmp)
    st = home.stat()
    if st.st_mode & 0o077 and st.st_uid == os.getuid() and not st.st_mode & stat.S_ISVTX:
        home.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover of a crashed run may have been created otherwise
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(stored, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
