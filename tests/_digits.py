"""Small real feature sets from sklearn's digits, written as real featpipe HDF5 caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

MULTILABEL_CLASSES = ["even", "gt4", "is_zero", "rare"]


def digits(n: int = 600, seed: int = 0):
    """(X, y, split) for ``n`` digits: features are pixel intensities, split 50/25/25."""
    X, y = load_digits(return_X_y=True)
    idx = np.random.default_rng(seed).permutation(len(y))[:n]
    X, y = X[idx].astype(np.float32), y[idx]
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    return X, y, split


def multilabel_targets(y: np.ndarray, split: np.ndarray) -> np.ndarray:
    """even / gt4 / is_zero plus 'rare': one train positive only (must be skipped, not crash)."""
    Y = np.stack([y % 2 == 0, y > 4, y == 0, np.zeros_like(y, dtype=bool)], 1).astype(np.uint8)
    Y[np.flatnonzero(split == "train")[0], 3] = 1
    return Y


def task_data(task: str, n: int = 600):
    """(X, labels, split, classes) for a task."""
    X, y, split = digits(n)
    if task == "multiclass":
        return X, y.astype(np.int64), split, [str(d) for d in range(10)]
    if task == "binary":
        return X, (y == 3).astype(np.int64), split, ["other", "three"]
    return X, multilabel_targets(y, split), split, list(MULTILABEL_CLASSES)


def write_cache(path: Path, task: str, n: int = 600, backbone: dict | None = None, split=None) -> Path:
    """A complete featpipe feature cache (real HDF5) holding digits features."""
    from featpipe.features.cache import OK, create_cache_file

    X, labels, sp, classes = task_data(task, n)
    if split is not None:
        sp = np.asarray(split)
    N = len(X)
    ids = [f"d{i:04d}" for i in range(N)]
    attrs = {
        "format": "featpipe-features", "format_version": 1, "key": f"digits-{task}-key",
        "config": {"source": "digits"}, "backbone": backbone or {"name": "pixels", "layer": None},
        "dataset": {"name": f"digits-{task}", "source": "sklearn.datasets.load_digits", "task": task},
        "task": task, "classes": classes, "seed": 0, "versions": {}, "completed": True,
        "timings": {"embed_seconds_total": 0.0},
    }
    carry = {"features": X, "status": np.full(N, OK, np.int8)}
    create_cache_file(Path(path), n=N, dim=X.shape[1], feature_dtype="float32", ids=ids,
                      paths=[f"digits#{i}" for i in range(N)], splits=list(sp), labels=labels,
                      labeled=np.ones(N, bool), attrs={k: v for k, v in attrs.items()}, carry=carry)
    json.dumps(attrs)
    return Path(path)


def write_arrays_cache(path: Path, X: np.ndarray, labels: np.ndarray, split, task: str, classes: list[str],
                       dataset: str | None = None, backbone: str = "pixels") -> Path:
    """A complete featpipe feature cache (real HDF5) holding the given rows (of ``dataset``, by default
    named after the file, embedded by ``backbone``)."""
    from featpipe.features.cache import OK, create_cache_file

    N = len(X)
    attrs = {
        "format": "featpipe-features", "format_version": 1, "key": f"{Path(path).stem}-key",
        "config": {"source": "arrays"}, "backbone": {"name": backbone, "layer": None},
        "dataset": {"name": dataset or Path(path).stem, "source": "arrays", "task": task},
        "task": task, "classes": list(classes), "seed": 0, "versions": {}, "completed": True,
        "timings": {"embed_seconds_total": 0.0},
    }
    create_cache_file(Path(path), n=N, dim=X.shape[1], feature_dtype="float32", ids=[f"r{i:04d}" for i in range(N)],
                      paths=[f"arrays#{i}" for i in range(N)], splits=list(split), labels=labels,
                      labeled=np.ones(N, bool), attrs=attrs,
                      carry={"features": np.asarray(X, np.float32), "status": np.full(N, OK, np.int8)})
    return Path(path)
