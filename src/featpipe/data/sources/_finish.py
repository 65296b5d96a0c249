"""The one step every source ends with: class names to indices, the split (featpipe's seeded one, or the
source's own with a missing val/test split carved out of train) and the :class:`Manifest` with its split
record. The split record feeds the cache keys, so it is made here only."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from featpipe.data.duplicates import content_keys
from featpipe.data.manifest import Manifest
from featpipe.data.splitting import assign_splits, check_fractions
from featpipe.errors import DatasetError

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def task_for(n_classes: int, where: str) -> str:
    """``binary`` or ``multiclass`` for a single-label dataset; fewer than 2 classes is an error."""
    if n_classes < 2:
        raise DatasetError(f"{where}: a classification dataset needs at least 2 classes, found {n_classes}")
    return "binary" if n_classes == 2 else "multiclass"


def sort_class_names(names: set[str] | list[str]) -> list[str]:
    """Class names sorted, numerically when every name is an integer."""
    names = list(set(names))
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def class_indices(names: Sequence[str | None], where: str) -> tuple[list[str], np.ndarray, str]:
    """Single-label rows by class name (``None``: unlabeled): sorted classes, int64 indices (-1) and task."""
    classes = sort_class_names({c for c in names if c is not None})
    task = task_for(len(classes), where)
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([-1 if c is None else index[c] for c in names], dtype=np.int64), task


def _fill_missing_splits(
    splits: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[str],
    task: str,
    fractions: Sequence[float],
    val_fraction: float | None,
    seed: int,
    content: Callable[[np.ndarray], list[str | None]],
) -> tuple[tuple[float, float, float] | None, int, int]:
    """Carve the missing val and/or test split out of the train rows, stratified and stable; in place.

    A missing val split takes ``val_fraction`` (default: the val share of ``fractions``) of the train
    rows, a missing test split the test share of ``fractions``. Copies among the train rows stay
    together (``content(rows)``: their content keys, see :func:`content_keys`). Returns the
    ``(train, val, test)`` fractions applied to the train rows (``None`` when nothing was carved), the
    repair count and the number of copies moved to their first copy's split.
    """
    fractions = check_fractions(fractions)
    present = set(splits.tolist())
    if "train" not in present:
        return None, 0, 0
    need_val, need_test = "val" not in present, "test" not in present
    if not (need_val or need_test):
        return None, 0, 0
    fv = fractions[1] if val_fraction is None else float(val_fraction)
    if not 0 <= fv < 1:
        raise DatasetError(f"val_fraction must be >= 0 and < 1, got {val_fraction}")
    fv = fv if need_val else 0.0
    ft = fractions[2] if need_test else 0.0
    if fv == 0 and ft == 0:
        return None, 0, 0
    fr = check_fractions((1.0 - fv - ft, fv, ft))
    tr = np.flatnonzero(splits == "train")
    res = assign_splits([ids[i] for i in tr], labels[tr], task, fr, seed, content(tr))
    splits[tr] = res.splits
    return fr, res.repairs, res.copies_moved


def finish(
    *,
    name: str,
    source: str,
    ids: list[str],
    paths: list[str],
    labels: np.ndarray,
    labeled: np.ndarray,
    task: str,
    classes: list[str],
    fractions: Sequence[float],
    seed: int,
    splits: Sequence[str] | None = None,
    val_fraction: float | None = None,
    skipped: list[tuple[str, str]] | None = None,
    array: np.ndarray | None = None,
) -> Manifest:
    """The manifest of a source's rows, split.

    ``splits=None``: featpipe splits the labeled rows (stable, stratified, ``seed`` and ``fractions``) and
    the others are ``unlabeled``. Given ``splits`` (the source's own, per row): a missing val and/or test
    split of the labeled rows is carved out of their train rows (see :func:`_fill_missing_splits`). Copies
    of one image (same file bytes, or same ``array`` row) always share a split.
    """
    def keys(rows: np.ndarray) -> list[str | None]:
        return content_keys([paths[i] for i in rows], array, rows if array is not None else None)

    lab = np.flatnonzero(labeled)
    lab_ids = [ids[i] for i in lab]
    if splits is None:
        fr: tuple[float, float, float] | None = check_fractions(fractions)
        out = np.array(["unlabeled"] * len(ids), dtype=object)
        res = assign_splits(lab_ids, labels[lab], task, fr, seed, keys(lab))  # type: ignore[arg-type]
        out[lab] = res.splits
        split_seed: int | None = seed
        repairs, copies = res.repairs, res.copies_moved
    else:
        out = np.array(splits, dtype=object)
        sub = out[lab].astype(str)
        fr, repairs, copies = _fill_missing_splits(
            sub, labels[lab], lab_ids, task, fractions, val_fraction, seed, lambda sel: keys(lab[sel])
        )
        out[lab] = sub
        split_seed = seed if fr is not None else None
    return Manifest(
        name=name,
        source=source,
        ids=ids,
        paths=paths,
        splits=[str(s) for s in out],
        labels=labels,
        labeled=labeled,
        task=task,
        classes=classes,
        split_seed=split_seed,
        split_fractions=fr,
        split_repairs=repairs,
        split_copies_moved=copies,
        skipped=skipped if skipped is not None else [],
        array=array,
    )
