"""The dataset manifest: one table every image source is turned into."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featpipe.errors import DatasetError

TASKS = ("binary", "multiclass", "multilabel")
SPLITS = ("train", "val", "test")



@dataclass
class Manifest:
    """Every image of a dataset with its split and label(s).

    ``labels`` is ``int64 (N,)`` class indices for binary/multiclass (``-1`` = unlabeled) or
    ``uint8 (N, C)`` multi-hot for multilabel (unlabeled rows are flagged by ``labeled``).
    Array-backed datasets (``.npz``) keep their images in ``array`` and use ``paths`` of the
    form ``"<file.npz>#<index>"``. ``split_repairs`` counts the images a seeded split moved away
    from their hash split so that every class/label appears where stratification needs it;
    ``split_copies_moved`` the copies of a duplicated image moved to the split of its first copy.
    """

    name: str
    source: str
    ids: list[str]
    paths: list[str]
    splits: list[str]
    labels: np.ndarray
    labeled: np.ndarray
    task: str
    classes: list[str]
    split_seed: int | None = None
    split_fractions: tuple[float, float, float] | None = None
    split_repairs: int = 0
    split_copies_moved: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    array: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.paths) == len(self.splits) == len(self.labels) == len(self.labeled) == n):
            raise DatasetError("manifest columns have different lengths")
        if self.task not in TASKS:
            raise DatasetError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if len(set(self.ids)) != n:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise DatasetError(f"image id {dup!r} appears more than once in dataset {self.name!r}")

    def __len__(self) -> int:
        return len(self.ids)

    def split_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.splits:
            out[s] = out.get(s, 0) + 1
        return out

    def info(self) -> dict[str, Any]:
        """JSON-able description recorded in caches and models."""
        return {
            "name": self.name,
            "source": self.source,
            "task": self.task,
            "classes": list(self.classes),
            "n_images": len(self),
            "split_counts": self.split_counts(),
            "split_seed": self.split_seed,
            "split_fractions": list(self.split_fractions) if self.split_fractions else None,
            "split_repairs": self.split_repairs,
            "split_copies_moved": self.split_copies_moved,
            "n_skipped": len(self.skipped),
        }

    def split_identity(self) -> dict[str, Any] | None:
        """The split seed and fractions when featpipe made the split (``None``: the source gave it)."""
        if self.split_seed is None:
            return None
        return {"split_seed": self.split_seed,
                "split_fractions": list(self.split_fractions) if self.split_fractions else None}

    def split_summary(self) -> str | None:
        """One line on how featpipe made the split (``None`` when the source gave every split)."""
        if self.split_seed is None:
            return None
        fr = "/".join(f"{f:g}" for f in self.split_fractions or ())
        n = self.split_repairs
        k = self.split_copies_moved
        return (f"split: seeded hash per image (seed {self.split_seed}, fractions {fr}); "
                f"{n} image{'' if n == 1 else 's'} moved so every class/label is in every split it needs; "
                f"{k} cop{'y' if k == 1 else 'ies'} of duplicated images moved to their first copy's split")

    def fingerprint(self) -> str:
        """Hash of ids, splits and labels (not image bytes): identifies the labelled dataset."""
        h = hashlib.sha256()
        h.update(json.dumps([self.task, self.classes]).encode())
        for i, s in zip(self.ids, self.splits, strict=True):
            h.update(f"{i}\0{s}\0".encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]
