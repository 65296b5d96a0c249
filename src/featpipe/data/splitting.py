"""Stable stratified train/val/test splits (single-label and multilabel).

Each image's split comes from a seeded hash of its id compared with the cumulative fractions, so it
never depends on the other images: adding images to a dataset leaves every old image where it was.
Copies of one image (rows with the same content key) first join the split of the copy with the
smallest id, so no content is in two splits; rows without copies keep their own hash split.
Stratification is then *repaired*, not redone: a class (or a label, in multilabel) with no image in
a split it needs gets the fewest moves that fix it (copies are never moved apart), and the number of
moved images is reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featpipe.errors import DatasetError

__all__ = ["SplitAssignment", "assign_splits", "stratified_split", "check_fractions", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, val, test)`` fractions: three numbers >= 0 summing to 1."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DatasetError(f"split fractions must be three numbers, got {fractions!r}") from None
    if len(fr) != 3:
        raise DatasetError(f"split fractions must be three numbers (train, val, test), got {len(fr)}")
    if any(not np.isfinite(f) or f < 0 for f in fr):
        raise DatasetError(f"split fractions must be >= 0, got {fractions!r}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise DatasetError(
            f"split fractions must sum to 1, got {' + '.join(f'{f:g}' for f in fr)} = {sum(fr):g}"
        )
    if fr[0] <= 0:
        raise DatasetError("the train fraction must be > 0")
    return fr  # type: ignore[return-value]


@dataclass(frozen=True)
class SplitAssignment:
    """Split name per row, how many rows were moved away from their hash split to stratify, and how
    many copies of a duplicated image were moved to their first copy's split."""

    splits: np.ndarray
    repairs: int
    copies_moved: int = 0


def id_uniform(ids: Sequence[str], seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per id from a seeded hash of the id alone."""
    # hand-written: numpy's generators draw a sequence, but each value must depend on its own id only
    out = np.empty(len(ids), dtype=np.float64)
    prefix = f"featpipe-split\0{int(seed)}\0".encode()
    for k, i in enumerate(ids):
        h = hashlib.blake2b(prefix + str(i).encode(), digest_size=8).digest()
        out[k] = int.from_bytes(h, "big") / 2.0**64
    return out


def _hash_splits(u: np.ndarray, fr: np.ndarray) -> np.ndarray:
    cum = np.cumsum(fr)
    idx = np.searchsorted(cum, u, side="right")
    idx = np.minimum(idx, 2)
    last_active = int(np.flatnonzero(fr > 0)[-1])
    idx[fr[idx] == 0] = last_active  # only reachable through float rounding at the upper edge
    return idx.astype(np.int64)


def _distance_to(u: np.ndarray, fr: np.ndarray, j: int) -> np.ndarray:
    """How far each hash value lies from split ``j``'s interval: the image "closest" to it moves."""
    lo = float(np.sum(fr[:j]))
    hi = lo + float(fr[j])
    return np.where(u < lo, lo - u, np.where(u >= hi, u - hi, 0.0))


def _required(n_members: int, active: np.ndarray) -> np.ndarray:
    """Splits a group of ``n_members`` must appear in: all active ones from 3 members, else train."""
    if n_members >= 3:
        return active.copy()
    req = np.zeros(3, dtype=bool)
    req[0] = n_members > 0
    return req


def _repair(
    group_rows: list[np.ndarray], row_groups: list[np.ndarray] | None, out: np.ndarray, u: np.ndarray,
    fr: np.ndarray, movable: np.ndarray | None = None,
) -> int:
    """Fill every empty required split of every group with one image each; returns the moves.

    ``group_rows[g]``: rows of group ``g`` (a class, or a label's positives); ``row_groups[r]``: the
    groups of row ``r`` (``None``: single-label, one group per row). Groups are visited rarest first.
    The image moved comes from a split that can spare it (it holds >= 2 of the group, or is not
    required); among those, one whose move leaves no other group's required split empty, and then
    the one whose hash lies closest to the target split (so repairs stay put as images are added).
    Rows not ``movable`` (copies of another row) are never moved.
    """
    active = fr > 0
    sizes = np.array([len(r) for r in group_rows], dtype=np.int64)
    required = np.array([_required(int(s), active) for s in sizes]).reshape(len(group_rows), 3)
    counts = np.array([np.bincount(out[r], minlength=3) for r in group_rows]).reshape(len(group_rows), 3)
    moves = 0
    for g in np.argsort(sizes, kind="stable"):
        rows_g = group_rows[g]
        for j in np.flatnonzero(required[g]):
            if counts[g, j] > 0:
                continue
            spare = (counts[g] >= 2) | ~required[g]
            cand = rows_g[spare[out[rows_g]] & (out[rows_g] != j)]
            if movable is not None:
                cand = cand[movable[cand]]
            if row_groups is not None and len(cand):
                # a move must not empty a required split of another group the image belongs to
                ok = [all(h == g or not required[h, out[r]] or counts[h, out[r]] >= 2 for h in row_groups[r])
                      for r in cand]
                cand = cand[np.asarray(ok, dtype=bool)]
            if len(cand) == 0:
                continue
            r = int(cand[np.lexsort((u[cand], _distance_to(u[cand], fr, int(j))))[0]])
            for h in ([g] if row_groups is None else row_groups[r]):
                counts[h, out[r]] -= 1
                counts[h, j] += 1
            out[r] = j
            moves += 1
    return moves


def assign_splits(
    ids: Sequence[str],
    labels: np.ndarray,
    task: str,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    groups: Sequence[str | None] | None = None,
) -> SplitAssignment:
    """Stable stratified split of labeled rows: ``"train"``/``"val"``/``"test"`` per row.

    ``labels``: int class indices ``(N,)`` for ``"binary"``/``"multiclass"``, multi-hot ``(N, C)`` for
    ``"multilabel"``. A row's split is its id's seeded hash against the cumulative fractions; then a
    class or label with >= 3 images that is missing from a split with a non-zero fraction, or with 1-2
    images and none in train, gets one image moved there (``repairs`` counts the moved rows).
    ``groups`` (e.g. :func:`featpipe.data.duplicates.content_keys`): rows sharing a key that is not
    ``None`` are copies of one image; they all take the split of the one with the smallest id before
    the repair, which never moves them (``copies_moved`` counts rows moved to join their copies).
    """
    fr = np.asarray(check_fractions(fractions), dtype=np.float64)
    y = np.asarray(labels)
    if task in ("binary", "multiclass"):
        if y.ndim != 1:
            raise DatasetError(f"{task} labels must be one class index per image, got shape {y.shape}")
    elif task == "multilabel":
        if y.ndim != 2:
            raise DatasetError(f"multilabel labels must be an (N, C) 0/1 matrix, got shape {y.shape}")
    else:
        raise DatasetError(f"unknown task {task!r}; expected binary, multiclass or multilabel")
    if len(ids) != len(y):
        raise DatasetError(f"{len(ids)} ids for {len(y)} label rows")
    if len(set(ids)) != len(ids):
        raise DatasetError("split ids must be unique")
    if len(y) == 0:
        return SplitAssignment(np.zeros(0, dtype="<U5"), 0)
    if groups is not None and len(groups) != len(ids):
        raise DatasetError(f"{len(groups)} content keys for {len(ids)} ids")
    u = id_uniform([str(i) for i in ids], seed)
    out = _hash_splits(u, fr)
    movable, copies_moved = _join_copies(ids, groups, u, out)
    if task == "multilabel":
        member = y.astype(bool)
        group_rows = [np.flatnonzero(member[:, g]) for g in range(member.shape[1])]
        row_groups: list[np.ndarray] | None = [np.flatnonzero(m) for m in member]
    else:
        _, inverse = np.unique(y, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        group_rows = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
        row_groups = None
    moves = _repair(group_rows, row_groups, out, u, fr, movable)
    return SplitAssignment(np.asarray(SPLIT_NAMES, dtype="<U5")[out], moves, copies_moved)


def _join_copies(ids: Sequence[str], groups: Sequence[str | None] | None, u: np.ndarray,
                 out: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Give every copy the split (and hash value) of the copy with the smallest id; in place.
    Returns which rows the repair may move (``None``: all) and how many rows changed split."""
    if groups is None:
        return None, 0
    by: dict[str, list[int]] = {}
    for r, g in enumerate(groups):
        if g is not None:
            by.setdefault(g, []).append(r)
    movable = np.ones(len(ids), dtype=bool)
    moved = 0
    for rows in by.values():
        if len(rows) < 2:
            continue
        first = min(rows, key=lambda r: str(ids[r]))
        for r in rows:
            moved += int(out[r] != out[first])
            out[r], u[r] = out[first], u[first]
            movable[r] = False
    return movable, moved


def stratified_split(
    labels: np.ndarray,
    task: str,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """:func:`assign_splits` returning only the split names; ``ids`` default to the row numbers."""
    ids = [str(i) for i in range(len(labels))] if ids is None else ids
    return assign_splits(ids, labels, task, fractions, seed).splits
