"""Decision thresholds tuned on the validation split.

Binary: one threshold on P(positive) for accuracy, F1 or balanced accuracy. Multilabel: a global
threshold for micro-F1 (or macro/samples F1) plus per-class thresholds for per-class F1, falling back to
the global one for labels with fewer than ``min_positives`` validation positives. Multiclass: argmax.

Rule "plateau-centre": the score curve over a fixed threshold grid is usually jagged on a small
validation set, so instead of its arg-max we take the centre of the widest run of thresholds whose score
is within ``tol`` of the best (default ``tol = 0.5 / n_val``, i.e. ties up to half an example).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featpipe.errors import HeadError

RULE = "plateau-centre"
BINARY_METRICS = ("f1", "accuracy", "balanced_accuracy")
MULTILABEL_METRICS = ("micro_f1", "macro_f1", "samples_f1")
DEFAULT_GRID = np.round(np.arange(0.005, 1.0, 0.005), 3)


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


def _counts(y: np.ndarray, score: np.ndarray, thresholds: np.ndarray):
    """tp, fp, fn, tn for every threshold (rows); ``y`` bool, ``score`` float, both flat."""
    pred = score[None, :] >= thresholds[:, None]
    tp = (pred & y).sum(1).astype(float)
    fp = (pred & ~y).sum(1).astype(float)
    fn = y.sum() - tp
    tn = (~y).sum() - fp
    return tp, fp, fn, tn


def _score_from_counts(tp, fp, fn, tn, metric: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "accuracy":
            return (tp + tn) / np.maximum(tp + fp + fn + tn, 1)
        if metric in ("f1", "micro_f1"):
            den = 2 * tp + fp + fn
            return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
        if metric == "balanced_accuracy":
            P, N = tp + fn, tn + fp
            tpr = np.where(P > 0, tp / np.where(P > 0, P, 1), np.nan)
            tnr = np.where(N > 0, tn / np.where(N > 0, N, 1), np.nan)
            return np.nanmean(np.stack([tpr, tnr]), axis=0)
    raise HeadError(f"unknown threshold metric {metric!r}")


def threshold_curve(y: np.ndarray, score: np.ndarray, metric: str = "f1",
                    grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a binary decision ``score >= t`` for every ``t`` of ``grid``."""
    grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=float)
    y = np.asarray(y).astype(bool).ravel()
    score = np.asarray(score, dtype=float).ravel()
    return grid, _score_from_counts(*_counts(y, score, grid), metric)


def tune_binary_threshold(y: np.ndarray, p_pos: np.ndarray, metric: str = "f1", tol: float | None = None,
                          grid: np.ndarray | None = None) -> ThresholdResult:
    """Threshold on ``P(positive)`` maximising ``metric`` on validation, by the plateau-centre rule."""
    if metric not in BINARY_METRICS:
        raise HeadError(f"threshold metric {metric!r} is not one of {', '.join(BINARY_METRICS)}")
    y = np.asarray(y).astype(bool).ravel()
    if len(y) == 0:
        raise HeadError("cannot tune a threshold on an empty validation split")
    tol = 0.5 / len(y) if tol is None else float(tol)
    t, s = threshold_curve(y, p_pos, metric, grid)
    centre, lo, hi = plateau_centre(t, s, tol)
    (val,) = threshold_curve(y, p_pos, metric, np.array([centre]))[1]
    return ThresholdResult(RULE, metric, centre, curve_thresholds=t.tolist(), curve_scores=s.tolist(),
                           plateau=(lo, hi), tol=tol, val_score=float(val))


def _multilabel_curve(Y: np.ndarray, P: np.ndarray, metric: str, grid: np.ndarray) -> np.ndarray:
    if metric == "micro_f1":
        return threshold_curve(Y.ravel(), P.ravel(), "f1", grid)[1]
    if metric == "macro_f1":
        per = np.stack([threshold_curve(Y[:, k], P[:, k], "f1", grid)[1] for k in range(Y.shape[1])
                        if Y[:, k].any()])
        return per.mean(0) if len(per) else np.zeros(len(grid))
    if metric == "samples_f1":
        out = np.empty(len(grid))
        for i, t in enumerate(grid):
            pred = P >= t
            tp = (pred & Y).sum(1)
            den = pred.sum(1) + Y.sum(1)
            out[i] = np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0).mean()
        return out
    raise HeadError(f"threshold metric {metric!r} is not one of {', '.join(MULTILABEL_METRICS)}")


def tune_multilabel_thresholds(Y: np.ndarray, P: np.ndarray, metric: str = "micro_f1", min_positives: int = 5,
                               tol: float | None = None, grid: np.ndarray | None = None) -> ThresholdResult:
    """A global threshold for ``metric`` and per-class thresholds for per-class F1.

    Labels with fewer than ``min_positives`` validation positives use the global threshold.
    """
    Y = np.asarray(Y).astype(bool)
    P = np.asarray(P, dtype=float)
    if len(Y) == 0:
        raise HeadError("cannot tune thresholds on an empty validation split")
    grid = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=float)
    tol_g = 0.5 / len(Y) if tol is None else float(tol)
    s = _multilabel_curve(Y, P, metric, grid)
    g, lo, hi = plateau_centre(grid, s, tol_g)
    per_class: list[float] = []
    source: list[str] = []
    for k in range(Y.shape[1]):
        if Y[:, k].sum() < min_positives:
            per_class.append(g)
            source.append("global")
            continue
        r = tune_binary_threshold(Y[:, k], P[:, k], "f1", tol, grid)
        per_class.append(float(r.global_))
        source.append("tuned")
    (val,) = _multilabel_curve(Y, P, metric, np.array([g]))
    return ThresholdResult(RULE, metric, g, per_class, source, grid.tolist(), s.tolist(), (lo, hi), tol_g,
                           float(val))


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
