"""Analyses on cached features: the chance level (label issues: _label_issues; duplicates: _duplicates)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from featpipe.metrics import evaluate


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def chance_level(cache: Any, metric: str, split: str = "test") -> dict[str, Any] | None:
    """Main metric of the best constant predictor (majority class, or 'always positive' for F1-like
    metrics) on ``split``; the probabilities are the train-split class priors (ranking metrics: 0.5)."""
    rows = cache.split_indices(split)
    if len(rows) == 0:
        split, rows = "val", cache.split_indices("val")
    tr = cache.split_indices("train")
    if len(rows) == 0 or len(tr) == 0:
        return None
    y = np.asarray(cache.labels)[rows]
    ytr = np.asarray(cache.labels)[tr]
    C = len(cache.classes)
    task = cache.task
    if task == "multilabel":
        prior = ytr.astype(float).mean(0)
        candidates = {
            "majority per label": (prior >= 0.5).astype(np.uint8),
            "always positive": np.ones(C, np.uint8),
        }
    else:
        prior = np.bincount(ytr.astype(int), minlength=C) / len(ytr)
        candidates = {f"always '{cache.classes[int(prior.argmax())]}'": int(prior.argmax())}
        if task == "binary":
            candidates["always positive"] = 1
    proba = np.tile(prior.astype(float), (len(rows), 1))
    best: dict[str, Any] | None = None
    for name, p in candidates.items():
        pred = np.tile(p, (len(rows), 1)) if task == "multilabel" else np.full(len(rows), p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = finite(evaluate(y, proba, pred, task, cache.classes, metric)["main"])
        if s is not None and (best is None or s > best["value"]):
            best = {"value": s, "rule": name, "split": split}
    return best
