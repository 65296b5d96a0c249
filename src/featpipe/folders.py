"""Folders featpipe writes into: made up front, with one line naming the folder when that is impossible
(a read-only disk, another user's folder), instead of a PermissionError deep inside a run."""

from __future__ import annotations

import os
from pathlib import Path

from featpipe.errors import FolderError


def is_writable(folder: str | Path) -> bool:
    """Whether this process may create files in the existing ``folder`` (permission bits, read-only mounts)."""
    return os.access(folder, os.W_OK | os.X_OK)


def make_folder(path: str | Path, what: str) -> Path:
    """``path``, created if needed; :class:`FolderError` naming it when it cannot be created."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FolderError(f"the {what} folder {path} exists as a file") from None
    except OSError as e:
        raise FolderError(f"cannot create the {what} folder {path}: {e.strerror or e}") from None
    return path


def writable_folder(path: str | Path, what: str) -> Path:
    """``path``, created if needed; :class:`FolderError` naming it when it cannot be created or written."""
    path = make_folder(path, what)
    if not is_writable(path):
        raise FolderError(f"the {what} folder {path} is not writable (read-only or another user's)")
    return path
