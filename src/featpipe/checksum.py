"""File identity and safe replacement: the one sha256 of a file, and writes that land whole or not at all."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)  # per (path, mtime, size): a weights file is hashed once per process


def sha256_file_cached(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, computed once per process for an unchanged file (same mtime and size)."""
    st = os.stat(path)
    return _cached_sha256(str(path), st.st_mtime_ns, st.st_size)


def file_id(path: str | os.PathLike) -> str:
    """A weights file's short identity: ``sha256:`` and the first 16 hex digits of its content hash."""
    return "sha256:" + sha256_file_cached(path)[:16]


def sidecar(path: str | os.PathLike) -> Path:
    """The ``.sha256`` file beside ``path`` that vouches for it."""
    return Path(str(path) + ".sha256")


def write_sidecar(path: str | os.PathLike, digest: str | None = None) -> Path:
    """Write ``path``'s sidecar: its hex sha256 (``digest`` when already known) and a line end."""
    return atomic_write_text(sidecar(path), (digest or sha256_file(path)) + "\n")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, flush it to disk, then rename it into place:
    a reader (or a kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` written to ``path`` whole or not at all (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
