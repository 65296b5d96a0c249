"""Images and labels as arrays in one ``.npz`` file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featpipe.data.manifest import Manifest
from featpipe.data.sources._finish import DEFAULT_FRACTIONS, class_indices, finish, task_for
from featpipe.data.sources._scan import normalize_split_name
from featpipe.data.splitting import check_fractions
from featpipe.errors import DatasetError


def _read_arrays(p: Path, images_key: str, labels_key: str, split_key: str | None):
    """The images, labels and split (``None``: no split array) arrays of the file."""
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
            if images_key not in keys:
                raise DatasetError(
                    f"{p}: no array {images_key!r} (arrays: {', '.join(keys)}); pass images_key"
                )
            if labels_key not in keys:
                raise DatasetError(
                    f"{p}: no array {labels_key!r} (arrays: {', '.join(keys)}); pass labels_key"
                )
            if split_key is None and "split" in keys:
                split_key = "split"
            if split_key is not None and split_key not in keys:
                raise DatasetError(f"{p}: no array {split_key!r} (arrays: {', '.join(keys)})")
            return z[images_key], z[labels_key], z[split_key] if split_key else None
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - zip/pickle/format errors: one line for the user
        raise DatasetError(f"{p}: cannot read npz ({type(e).__name__}: {e})") from None


def _check_images(p: Path, images: np.ndarray, n_labels: int) -> None:
    if images.dtype != np.uint8:
        raise DatasetError(f"{p}: images must be uint8, got {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] in (1, 3, 4))):
        raise DatasetError(f"{p}: images must have shape (N, H, W) or (N, H, W, 1|3|4), got {images.shape}")
    if len(images) == 0:
        raise DatasetError(f"{p}: no images")
    if n_labels != len(images):
        raise DatasetError(f"{p}: {len(images)} images but {n_labels} labels")


def _multi_hot(p: Path, y: np.ndarray, class_names: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    if not np.isin(y, (0, 1)).all():
        bad = int(np.flatnonzero(~np.isin(y, (0, 1)).all(axis=1))[0])
        raise DatasetError(f"{p}: multi-hot labels must be 0/1 (row {bad} has {y[bad].tolist()})")
    classes = [str(c) for c in class_names] if class_names is not None else [str(j) for j in range(y.shape[1])]
    if len(classes) != y.shape[1]:
        raise DatasetError(f"{p}: {len(classes)} class names for {y.shape[1]} label columns")
    return classes, y.astype(np.uint8)


def _class_labels(
    p: Path, y: np.ndarray, class_names: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """Single-label ``y`` (strings, empty = unlabeled; or integers, ``-1`` = unlabeled): classes, int64
    labels, labeled mask and task."""
    if y.dtype.kind in "US":
        ys = y.astype(str)
        labeled = np.array([s.strip() != "" for s in ys], dtype=bool)
        classes, labels, task = class_indices([s if ok else None for s, ok in zip(ys, labeled, strict=True)], str(p))
        return classes, labels, labeled, task
    if not (y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0))):
        raise DatasetError(f"{p}: labels must be integers, strings or a 0/1 matrix, got {y.dtype}")
    yi = y.astype(np.int64)
    labeled = yi >= 0
    uniq = np.unique(yi[labeled])
    if class_names is not None:
        classes = [str(c) for c in class_names]
        if uniq.size and uniq.max() >= len(classes):
            raise DatasetError(f"{p}: label {int(uniq.max())} but only {len(classes)} class names")
        labels = yi
    elif uniq.size and (uniq == np.arange(uniq.size)).all():
        classes = [str(c) for c in uniq]
        labels = yi
    else:
        classes = [str(c) for c in uniq]
        labels = np.where(labeled, np.searchsorted(uniq, yi), -1).astype(np.int64)
    task = task_for(len(classes), str(p))
    return classes, np.where(labeled, labels, -1).astype(np.int64), labeled, task


def from_npz(
    path: str | Path,
    *,
    images_key: str = "images",
    labels_key: str = "labels",
    split_key: str | None = None,
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Manifest:
    """Images ``(N, H, W[, C])`` uint8 and labels ``(N,)`` (ints or strings; ``-1`` = unlabeled) or
    ``(N, C)`` 0/1 in one ``.npz``. ``split_key`` (auto: ``split`` if present) holds per-row split names;
    without it rows are split stratified. Paths are ``"<file.npz>#<i>"``, ids ``"<i>"``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"npz file not found: {p}")
    p = p.resolve()
    images, y, split_arr = _read_arrays(p, images_key, labels_key, split_key)
    _check_images(p, images, len(y))
    n = len(images)
    if y.ndim == 2:
        task = "multilabel"
        classes, labels = _multi_hot(p, y, class_names)
        labeled = np.ones(n, dtype=bool)
    elif y.ndim == 1:
        classes, labels, labeled, task = _class_labels(p, y, class_names)
    else:
        raise DatasetError(f"{p}: labels must have shape (N,) or (N, C), got {y.shape}")

    splits: np.ndarray | None = None
    if split_arr is not None:
        if len(split_arr) != n:
            raise DatasetError(f"{p}: {n} images but {len(split_arr)} split values")
        splits = np.array([normalize_split_name(s) for s in split_arr.astype(str)], dtype=object)
        labeled &= np.isin(splits.astype(str), ("train", "val", "test"))
        splits[~labeled & np.isin(splits.astype(str), ("train", "val", "test"))] = "unlabeled"
    check_fractions(fractions)  # bad fractions are named before a lack of labeled rows
    if not labeled.any():
        raise DatasetError(f"{p}: no labeled rows")
    if task == "multilabel":
        labels[~labeled] = 0
    return finish(
        name=name or p.stem, source=str(p), ids=[str(i) for i in range(n)], paths=[f"{p}#{i}" for i in range(n)],
        labels=labels, labeled=labeled, task=task, classes=classes, fractions=fractions, seed=seed,
        splits=None if splits is None else list(splits), val_fraction=val_fraction, array=images,
    )
