"""Decision thresholds tuned on the validation split.

Binary: one threshold on P(positive) for the run's metric. Multilabel: a global threshold for the
run's metric plus per-class thresholds for each label's own metric (``Metric.per_label``), falling back
to the global one for labels with fewer than ``min_positives`` validation positives. Multiclass: argmax.
The metric definitions (and their fast curve form) live in :mod:`featpipe.heads.metrics`; a probability
metric (ROC AUC, AP) does not depend on the threshold, so thresholds then follow the task's default.

Rule "plateau-centre": the score curve over a fixed threshold grid is usually jagged on a small
validation set, so instead of its arg-max we take the centre of the widest run of thresholds whose score
is within ``tol`` of the best (default ``tol = 0.5 / n_val``, i.e. ties up to half an example).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featpipe.errors import HeadError
from featpipe.heads.metrics import DEFAULT_GRID, METRIC_TABLE, decision_curve, get_metric, threshold_metric

RULE = "plateau-centre"


@dataclass
class ThresholdResult:
    """A tuned threshold (or per-class thresholds) with the curve it was read from."""

    rule: str
    metric: str
    global_: float | None
    per_class: list[float] | None = None
    per_class_source: list[str] | None = None  # "tuned" | "global" per class
    curve_thresholds: list[float] = field(default_factory=list)
    curve_scores: list[float] = field(default_factory=list)
    plateau: tuple[float, float] | None = None
    tol: float | None = None
    val_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``threshold`` block of metrics.json."""
        return {
            "rule": self.rule,
            "metric": self.metric,
            "global": self.global_,
            "per_class": self.per_class,
            "per_class_source": self.per_class_source,
            "curve": {"thresholds": list(self.curve_thresholds), "scores": list(self.curve_scores)},
            "plateau": list(self.plateau) if self.plateau else None,
            "tol": self.tol,
            "val_score": self.val_score,
        }


def plateau_centre(thresholds: np.ndarray, scores: np.ndarray, tol: float) -> tuple[float, float, float]:
    """Centre of the widest contiguous run of ``scores >= max - tol``; returns ``(centre, lo, hi)``.

    Width is measured in threshold units; between equally wide runs the one holding the maximum wins,
    then the lower one.
    """
    t = np.asarray(thresholds, dtype=float)
    s = np.asarray(scores, dtype=float)
    if len(t) == 0 or np.isnan(s).all():
        raise HeadError("cannot tune a threshold: the score curve is empty or undefined")
    best = np.nanmax(s)
    near = np.nan_to_num(s, nan=-np.inf) >= best - tol - 1e-12
    i_best = int(np.nanargmax(s))
    runs: list[tuple[int, int]] = []
    start = None
    for i, ok in enumerate(near):
        if ok and start is None:
            start = i
        if not ok and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(near) - 1))
    lo, hi = max(runs, key=lambda r: (t[r[1]] - t[r[0]], r[0] <= i_best <= r[1], -r[0]))
    return round(float((t[lo] + t[hi]) / 2), 6), float(t[lo]), float(t[hi])


def _check_decision(metric: str, task: str) -> str:
    m = get_metric(metric, task)
    if not m.decision:
        choices = ", ".join(n for n, x in METRIC_TABLE.items() if x.decision and task in x.keys)
        raise HeadError(f"threshold metric {metric!r} does not depend on a threshold; use one of {choices}")
    return m.name


def threshold_curve(y: np.ndarray, score: np.ndarray, metric: str = "f1",
                    grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a binary decision ``score >= t`` for every ``t`` of ``grid``."""
    grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=float)
    return grid, decision_curve(_check_decision(metric, "binary"), "binary", y, score, grid)


def tune_binary_threshold(y: np.ndarray, p_pos: np.ndarray, metric: str = "f1", tol: float | None = None,
                          grid: np.ndarray | None = None) -> ThresholdResult:
    """Threshold on ``P(positive)`` maximising ``metric`` on held-out rows, by the plateau-centre rule."""
    metric = _check_decision(metric, "binary")
    y = np.asarray(y).astype(bool).ravel()
    if len(y) == 0:
        raise HeadError("cannot tune a threshold on an empty validation split")
    tol = 0.5 / len(y) if tol is None else float(tol)
    t, s = threshold_curve(y, p_pos, metric, grid)
    centre, lo, hi = plateau_centre(t, s, tol)
    (val,) = threshold_curve(y, p_pos, metric, np.array([centre]))[1]
    return ThresholdResult(RULE, metric, centre, curve_thresholds=t.tolist(), curve_scores=s.tolist(),
                           plateau=(lo, hi), tol=tol, val_score=float(val))


def tune_multilabel_thresholds(Y: np.ndarray, P: np.ndarray, metric: str = "micro_f1", min_positives: int = 5,
                               tol: float | None = None, grid: np.ndarray | None = None) -> ThresholdResult:
    """A global threshold for ``metric`` and per-class thresholds for each label's own metric.

    Labels with fewer than ``min_positives`` positives among the tuning rows use the global threshold.
    """
    metric = _check_decision(metric, "multilabel")
    per_label = METRIC_TABLE[metric].per_label
    Y = np.asarray(Y).astype(bool)
    P = np.asarray(P, dtype=float)
    if len(Y) == 0:
        raise HeadError("cannot tune thresholds on an empty validation split")
    grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=float)
    tol_g = 0.5 / len(Y) if tol is None else float(tol)
    s = decision_curve(metric, "multilabel", Y, P, grid)
    g, lo, hi = plateau_centre(grid, s, tol_g)
    per_class: list[float] = []
    source: list[str] = []
    for k in range(Y.shape[1]):
        if Y[:, k].sum() < min_positives:
            per_class.append(g)
            source.append("global")
            continue
        r = tune_binary_threshold(Y[:, k], P[:, k], per_label, tol, grid)
        per_class.append(float(r.global_))
        source.append("tuned")
    (val,) = decision_curve(metric, "multilabel", Y, P, np.array([g]))
    return ThresholdResult(RULE, metric, g, per_class, source, grid.tolist(), s.tolist(), (lo, hi), tol_g,
                           float(val))


def tune_thresholds(task: str, y: np.ndarray, proba: np.ndarray, metric: str | None, min_positives: int = 5,
                    tol: float | None = None, mode: str = "per-class") -> tuple[Any, dict[str, Any] | None]:
    """Thresholds a model uses (``None`` for multiclass) and their record, tuned for the run's metric.

    ``mode`` (multilabel) picks the per-class or the global thresholds; both are recorded.
    """
    if task == "multiclass":
        return None, None
    tm = threshold_metric(metric, task)
    if task == "binary":
        r = tune_binary_threshold(y, np.asarray(proba)[:, 1], tm, tol)
        return float(r.global_), r.to_dict()
    if mode not in ("per-class", "global"):
        raise HeadError(f"unknown threshold mode {mode!r}; expected per-class or global")
    r = tune_multilabel_thresholds(y, proba, tm, min_positives, tol)
    per = r.per_class if mode == "per-class" else [r.global_] * len(r.per_class)
    return np.asarray(per, dtype=float), {**r.to_dict(), "used": mode}


def apply_thresholds(proba: np.ndarray, task: str, threshold: float | np.ndarray | None) -> np.ndarray:
    """Decisions from probabilities: binary -> 0/1 ints, multiclass -> argmax, multilabel -> uint8 (n, C).

    Rows of nan probabilities give ``-1`` (single-label) or all zeros (multilabel).
    """
    proba = np.asarray(proba, dtype=float)
    bad = np.isnan(proba).any(axis=1) if proba.ndim == 2 and len(proba) else np.zeros(len(proba), bool)
    if task == "multilabel":
        t = 0.5 if threshold is None else np.asarray(threshold, dtype=float)
        out = (np.nan_to_num(proba, nan=-1.0) >= t).astype(np.uint8)
        out[bad] = 0
        return out
    if task == "binary":
        t = 0.5 if threshold is None else float(threshold)
        out = (np.nan_to_num(proba[:, 1], nan=-1.0) >= t).astype(np.int64)
    else:
        out = np.argmax(np.nan_to_num(proba, nan=-1.0), axis=1).astype(np.int64)
    out[bad] = -1
    return out
