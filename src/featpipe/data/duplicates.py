"""Exact copies among a dataset's images, found before the split so that copies share one split.

A row's key is the sha1 of its content (the same digest the feature cache stores per row) when another
row has identical content, else ``None``. Files are compared by size first, then by their first 4 KiB,
and only files that still collide are read whole: a folder without same-size files reads nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

HEAD_BYTES = 4096


def _groups(keys: Sequence[object]) -> list[list[int]]:
    by: dict[object, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k is not None:
            by[k].append(i)
    return [g for g in by.values() if len(g) > 1]


def _read(path: str, limit: int | None) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit) if limit else f.read()
    except OSError:
        return None


def content_keys(paths: Sequence[str], array: np.ndarray | None = None,
                 rows: Sequence[int] | None = None) -> list[str | None]:
    """Per path (or per ``array`` row: ``rows`` gives each path's row), the sha1 of its content when
    another one has the same content, else ``None`` (also for files that cannot be read)."""
    n = len(paths)
    out: list[str | None] = [None] * n
    if array is not None:
        idx = list(range(n)) if rows is None else list(rows)
        digests = [hashlib.sha1(np.ascontiguousarray(array[i]).tobytes()).hexdigest() for i in idx]
        for g in _groups(digests):
            for i in g:
                out[i] = digests[i]
        return out
    sizes: list[object] = []
    for p in paths:
        try:
            sizes.append(os.stat(p).st_size)
        except OSError:
            sizes.append(None)
    heads: list[object] = [None] * n
    for g in _groups(sizes):
        for i in g:
            b = _read(str(paths[i]), HEAD_BYTES)
            heads[i] = None if b is None else (sizes[i], hashlib.sha1(b).hexdigest())
    full: list[str | None] = [None] * n
    for g in _groups(heads):
        for i in g:
            b = _read(str(paths[i]), None)
            full[i] = None if b is None else hashlib.sha1(b).hexdigest()
    for g in _groups(full):  # same size and start but different content: no copy
        for i in g:
            out[i] = full[i]
    return out
