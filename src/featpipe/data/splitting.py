"""Deterministic stratified train/val/test splits (single-label and multilabel)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featpipe.errors import DatasetError

__all__ = ["stratified_split", "check_fractions", "SPLIT_NAMES"]

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


def _allocate(n: int, fr: np.ndarray, carry: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` items into integer counts per split following ``fr``.

    ``carry`` (target minus assigned so far, over earlier groups) breaks rounding ties so totals stay
    close to the fractions. Groups of 1-2 fill train first; groups of >= 3 get at least one item in
    every split with a non-zero fraction.
    """
    counts = np.zeros(3, dtype=np.int64)
    if n <= 0:
        return counts
    active = fr > 0
    if n <= 2:
        counts[0] = 1
        if n == 2:
            # second item: where it is most wanted among the others (train if it is the only split)
            others = [j for j in (1, 2) if active[j]]
            j = max(others, key=lambda k: (fr[k] + carry[k], -k)) if others else 0
            counts[j] += 1
        return counts
    exact = n * fr
    counts = np.floor(exact).astype(np.int64)
    rem = exact - counts
    for _ in range(n - int(counts.sum())):
        score = np.where(active, rem + 0.5 * carry + 1e-9 * rng.random(3), -np.inf)
        j = int(np.argmax(score))
        counts[j] += 1
        rem[j] -= 1.0
    # every active split gets at least one item (taken from the largest)
    for j in np.flatnonzero(active):
        if counts[j] == 0:
            k = int(np.argmax(counts))
            counts[k] -= 1
            counts[j] += 1
    return counts


def _single_label(y: np.ndarray, fr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(len(y), dtype=np.int64)
    carry = np.zeros(3)
    classes, inverse = np.unique(y, return_inverse=True)
    for c in range(len(classes)):
        idx = np.flatnonzero(inverse == c)
        idx = idx[rng.permutation(len(idx))]
        counts = _allocate(len(idx), fr, carry, rng)
        carry += len(idx) * fr - counts
        out[idx] = np.repeat(np.arange(3), counts)
    return out


def _multilabel(y: np.ndarray, fr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011).

    Labels are handled rarest first; each example carrying the current label goes to the split that
    still wants most of that label (ties: most examples overall wanted, then random). Per-label wants
    are integer allocations with at least one positive per split for labels with >= 3 positives.
    """
    n, n_labels = y.shape
    y = y.astype(bool)
    out = np.full(n, -1, dtype=np.int64)
    carry = np.zeros(3)
    want_label = np.zeros((n_labels, 3))
    pos = y.sum(axis=0)
    for lab in np.argsort(pos, kind="stable"):
        counts = _allocate(int(pos[lab]), fr, carry, rng)
        carry += pos[lab] * fr - counts
        want_label[lab] = counts
    want_total = n * fr.astype(np.float64)
    active = fr > 0
    remaining = pos.astype(np.int64).copy()
    label_tiebreak = rng.random(n_labels)

    while remaining.sum() > 0:
        cand = np.flatnonzero(remaining > 0)
        lab = cand[np.lexsort((label_tiebreak[cand], remaining[cand]))[0]]
        rows = np.flatnonzero(y[:, lab] & (out < 0))
        rows = rows[rng.permutation(len(rows))]
        for r in rows:
            score_l = np.where(active, want_label[lab], -np.inf)
            best = np.flatnonzero(score_l == score_l.max())
            if len(best) > 1:
                tot = want_total[best]
                best = best[tot == tot.max()]
            j = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
            out[r] = j
            labs = y[r]
            want_label[labs, j] -= 1
            want_total[j] -= 1
            remaining[labs] -= 1

    # examples without any positive label: fill what each split still wants
    rest = np.flatnonzero(out < 0)
    rest = rest[rng.permutation(len(rest))]
    if len(rest):
        want = np.clip(want_total, 0, None)
        share = want / want.sum() if want.sum() > 0 else fr
        out[rest] = np.repeat(np.arange(3), _allocate(len(rest), share, np.zeros(3), rng))
    return out


def stratified_split(
    labels: np.ndarray,
    task: str,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> np.ndarray:
    """Assign every row to ``"train"``, ``"val"`` or ``"test"``; returns a string array.

    ``labels``: int class indices ``(N,)`` for ``"binary"``/``"multiclass"``, multi-hot ``(N, C)`` for
    ``"multilabel"`` (all rows labeled). Same input and seed give the same split. Single-label splits
    are stratified per class (classes with 1-2 images go to train first; classes with >= 3 images
    appear in every split with a non-zero fraction); multilabel uses iterative stratification so labels
    with >= 3 positives appear in every split whenever possible.
    """
    fr = np.asarray(check_fractions(fractions), dtype=np.float64)
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if task in ("binary", "multiclass"):
        if y.ndim != 1:
            raise DatasetError(f"{task} labels must be one class index per image, got shape {y.shape}")
        idx = _single_label(y, fr, rng) if len(y) else np.zeros(0, dtype=np.int64)
    elif task == "multilabel":
        if y.ndim != 2:
            raise DatasetError(f"multilabel labels must be an (N, C) 0/1 matrix, got shape {y.shape}")
        idx = _multilabel(y, fr, rng) if len(y) else np.zeros(0, dtype=np.int64)
    else:
        raise DatasetError(f"unknown task {task!r}; expected binary, multiclass or multilabel")
    return np.asarray(SPLIT_NAMES, dtype="<U5")[idx]
