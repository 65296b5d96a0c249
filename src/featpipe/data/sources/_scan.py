"""What every file-based source shares: which names are images, which are junk, folder scans, split names
and ids made from relative paths."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from featpipe.data.images import IMAGE_EXTENSIONS
from featpipe.errors import DatasetError

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
_JUNK_DIRS = {"__macosx", "__pycache__"}


def normalize_split_name(name: str) -> str:
    """``train``/``training`` -> train, ``val``/``valid``/``validation``/``dev`` -> val, ``test``/``testing``
    -> test (case-insensitive); any other name is returned stripped (an unlabeled split)."""
    s = str(name).strip()
    return _SPLIT_ALIASES.get(s.lower(), s)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_FILES or name.lower() in _JUNK_DIRS


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not is_hidden(p.name))


def scan_images(d: Path, skipped: list[tuple[str, str]], recursive: bool = True) -> list[Path]:
    """Image files under ``d`` (sorted); non-image files go to ``skipped``; hidden entries are ignored."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(x for x in dirnames if not is_hidden(x)) if recursive else []
        for f in sorted(filenames):
            if is_hidden(f):
                continue
            p = Path(dirpath) / f
            if is_image_name(f):
                found.append(p)
            else:
                skipped.append((str(p), "not an image file (extension)"))
    return found


def unique_ids(rels: Sequence[str]) -> list[str]:
    """Relative paths without extension (POSIX separators); keep the extension where that collides."""
    stems = [os.path.splitext(r)[0].replace(os.sep, "/") for r in rels]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    ids = [r.replace(os.sep, "/") if counts[s] > 1 else s for r, s in zip(rels, stems, strict=True)]
    if len(set(ids)) != len(ids):  # extremely unlikely (e.g. "a" file and "a.jpg" id); number them
        seen: dict[str, int] = {}
        out = []
        for i in ids:
            k = seen.get(i, 0)
            seen[i] = k + 1
            out.append(i if k == 0 else f"{i}#{k}")
        ids = out
    return ids


def existing_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{what} not found: {p}")
    if not p.is_dir():
        raise DatasetError(f"{what} is not a folder: {p}")
    return p.resolve()
