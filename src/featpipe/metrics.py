"""Classification metrics for binary, multiclass and multilabel heads, safe for JSON.

Undefined values (a class absent from ``y_true``, a metric with no positives) are ``nan`` here and
become ``null`` through :func:`jsonable`; nothing here emits sklearn's undefined-metric warnings.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featpipe.data.manifest import TASKS
from featpipe.errors import HeadError


@dataclass(frozen=True)
class Metric:
    """One user-facing metric: what it means per task, its direction and whether it scores probabilities.

    ``keys`` maps a task to the key of :func:`evaluate`'s dict that holds it (which also names its
    scikit-learn definition in ``SKLEARN``); ``per_label`` is the binary metric each label of a
    multilabel task is selected/early-stopped by (one-vs-rest heads fit one binary problem per label);
    ``decision`` metrics depend on a decision threshold, which featpipe tunes (binary, multilabel).
    """

    name: str
    keys: Mapping[str, str]
    needs_proba: bool = False
    greater_is_better: bool = True
    per_label: str = "f1"

    @property
    def decision(self) -> bool:
        return not self.needs_proba


_ALL = ("binary", "multiclass", "multilabel")


def _same(key: str) -> dict[str, str]:
    return dict.fromkeys(_ALL, key)


# THE metric table: every selection, early stop, threshold, report column and fine-tune metric reads it.
METRIC_TABLE: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", _same("accuracy"), per_label="accuracy"),  # multilabel: subset accuracy
    Metric("balanced_accuracy", _same("balanced_accuracy"), per_label="balanced_accuracy"),
    Metric("f1", {"binary": "f1_binary", "multiclass": "f1_macro", "multilabel": "f1_micro"}),
    Metric("micro_f1", _same("f1_micro")),
    Metric("macro_f1", _same("f1_macro")),
    Metric("weighted_f1", _same("f1_weighted")),
    Metric("samples_f1", {"multilabel": "f1_samples"}),
    Metric("roc_auc", _same("roc_auc"), needs_proba=True, per_label="roc_auc"),  # macro one-vs-rest
    Metric("average_precision", _same("average_precision"), needs_proba=True, per_label="average_precision"),
    Metric("map", _same("average_precision"), needs_proba=True, per_label="average_precision"),
)}
METRICS = tuple(METRIC_TABLE)
DEFAULT_METRIC = {"binary": "f1", "multiclass": "accuracy", "multilabel": "micro_f1"}


def get_metric(metric: str | None, task: str) -> Metric:
    """The table entry of ``metric`` (default: the task's), checked to be defined for ``task``."""
    metric = metric or DEFAULT_METRIC[task]
    m = METRIC_TABLE.get(metric)
    if m is None:
        raise HeadError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if task not in m.keys:
        raise HeadError(f"metric {metric!r} is not defined for a {task} task")
    return m


def main_metric_key(metric: str | None, task: str) -> str:
    """Key of ``evaluate()``'s dict that holds the main metric ``metric`` for ``task``."""
    return get_metric(metric, task).keys[task]


def threshold_metric(metric: str | None, task: str) -> str:
    """Metric a decision threshold is tuned for: ``metric`` itself, or the task default for a
    probability metric (ROC AUC / AP do not depend on the threshold)."""
    m = get_metric(metric, task)
    return m.name if m.decision else DEFAULT_METRIC[task]


def _per_class_curve_score(kind: str):
    def fn(Yt: np.ndarray, P: np.ndarray) -> np.ndarray:
        return np.array([_binary_curve_metric(Yt[:, k], P[:, k], kind) for k in range(Yt.shape[1])])
    return fn


def _sk_balanced_multilabel(Yt, Yp) -> float:
    from sklearn.metrics import recall_score

    tpr = recall_score(Yt, Yp, average=None, zero_division=np.nan)
    tnr = recall_score(1 - Yt, 1 - Yp, average=None, zero_division=np.nan)
    return _nanmean((tpr + tnr) / 2)


def sklearn_score(key: str, task: str, y_true: np.ndarray, proba: np.ndarray, pred: np.ndarray) -> float:
    """``evaluate()`` key ``key`` computed by scikit-learn (the reference definition of every metric).

    Labels/predictions are class indices (binary, multiclass) or multi-hot (multilabel); undefined
    values are nan (classes absent from both truth and prediction are left out of averages).
    """
    from sklearn import metrics as skm

    y_true, pred, proba = np.asarray(y_true), np.asarray(pred), np.asarray(proba, dtype=float)
    labels = None if task == "multilabel" else list(range(proba.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if key == "accuracy":
            return float(skm.accuracy_score(y_true, pred))
        if key == "balanced_accuracy":
            if task == "multilabel":
                return _sk_balanced_multilabel(y_true, pred)
            return float(skm.balanced_accuracy_score(y_true, pred))
        if key.startswith("f1_"):
            avg = key[3:]
            if avg == "binary":
                return float(skm.f1_score(y_true, pred, average="binary", zero_division=np.nan))
            if avg == "micro" and task != "multilabel":
                labels = None
            if avg in ("macro", "weighted") and task != "multilabel":
                labels = sorted(set(np.unique(y_true)) | set(np.unique(pred)))
            return float(skm.f1_score(y_true, pred, average=avg, labels=labels, zero_division=np.nan))
        if key in ("roc_auc", "average_precision"):
            Yt = y_true.astype(bool) if task == "multilabel" else _indicator(y_true.astype(int), proba.shape[1])
            per = _per_class_curve_score(key)(Yt, proba)
            return float(per[1]) if task == "binary" else _nanmean(per)
    raise HeadError(f"no scikit-learn definition for metric key {key!r}")


def score(metric: str | None, task: str, y_true: np.ndarray, proba: np.ndarray,
          pred: np.ndarray | None = None) -> float:
    """``metric`` for ``task`` by its scikit-learn definition; ``pred`` defaults to arg-max / ``>= 0.5``."""
    m = get_metric(metric, task)
    proba = np.asarray(proba, dtype=float)
    if pred is None:
        pred = (proba >= 0.5).astype(np.uint8) if task == "multilabel" else proba.argmax(1)
    return sklearn_score(m.keys[task], task, y_true, proba, pred)


# -- threshold curves: the count-based form of the decision metrics -----------------------------------
# Hand-written because a curve needs the metric at ~200 thresholds per label per early-stopping epoch
# (one sklearn call each is ~1000x slower); tests check every value against sklearn_score.

def _counts_metric(key: str, tp, fp, fn, tn) -> np.ndarray:
    """Count-decomposable metric from per-class counts ``(..., C)`` -> ``(...)``; nan where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        support = tp + fn
        predicted = tp + fp
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        if key == "f1_binary":
            return f1[..., 1]
        if key == "f1_micro":
            T, F = tp.sum(-1), (fp + fn).sum(-1)
            return np.where(2 * T + F > 0, 2 * T / (2 * T + F), np.nan)
        if key == "f1_macro":
            return _nanmean_axis(f1)
        if key == "f1_weighted":
            w = np.where(np.isnan(f1), 0, support)
            return np.where(w.sum(-1) > 0, (np.nan_to_num(f1) * w).sum(-1) / w.sum(-1), np.nan)
        if key == "accuracy_single":  # single-label: correct / n
            return tp.sum(-1) / np.maximum(support.sum(-1), 1)
        if key == "balanced_accuracy_single":
            return _nanmean_axis(np.where(support > 0, tp / support, np.nan))
        if key == "balanced_accuracy_multilabel":
            tpr = np.where(support > 0, tp / support, np.nan)
            tnr = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
            return _nanmean_axis((tpr + tnr) / 2)
        del predicted
    raise HeadError(f"metric key {key!r} has no count form")


def _nanmean_axis(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    n = ok.sum(-1)
    return np.where(n > 0, np.where(ok, x, 0).sum(-1) / np.maximum(n, 1), np.nan)


def decision_curve(metric: str, task: str, y_true: np.ndarray, p: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``metric`` of the decisions ``p >= t`` for every ``t`` of ``grid`` (binary: ``p`` = P(positive)).

    Binary: ``y_true`` 0/1 ``(n,)``; multilabel: multi-hot ``(n, C)`` with one global threshold.
    """
    key = get_metric(metric, task).keys[task]
    grid = np.asarray(grid, dtype=float)
    if task == "binary":
        y = np.asarray(y_true).astype(bool).ravel()
        d = np.asarray(p, dtype=float).ravel()[None, :] >= grid[:, None]  # (T, n)
        tp1 = (d & y).sum(1).astype(float)
        fp1 = (d & ~y).sum(1).astype(float)
        fn1, tn1 = y.sum() - tp1, (~y).sum() - fp1
        tp, fp = np.stack([tn1, tp1], 1), np.stack([fn1, fp1], 1)
        fn, tn = np.stack([fp1, fn1], 1), np.stack([tp1, tn1], 1)
        k = {"accuracy": "accuracy_single", "balanced_accuracy": "balanced_accuracy_single"}.get(key, key)
        return _counts_metric(k, tp, fp, fn, tn)
    if task != "multilabel":
        raise HeadError("decision curves are defined for binary and multilabel tasks (multiclass uses arg-max)")
    Y = np.asarray(y_true).astype(bool)
    P = np.asarray(p, dtype=float)
    out = np.empty(len(grid))
    for i, t in enumerate(grid):  # one pass per threshold keeps memory at O(n*C)
        D = P >= t
        if key == "accuracy":
            out[i] = (D == Y).all(1).mean()
            continue
        tp, fp, fn = (D & Y).sum(0), (D & ~Y).sum(0), (~D & Y).sum(0)
        if key == "f1_samples":
            den = (2 * (D & Y) + (D ^ Y)).sum(1)
            ok = den > 0
            out[i] = (2 * (D & Y).sum(1)[ok] / den[ok]).mean() if ok.any() else np.nan
            continue
        tn = (~D & ~Y).sum(0)
        k = "balanced_accuracy_multilabel" if key == "balanced_accuracy" else key
        out[i] = _counts_metric(k, tp.astype(float), fp.astype(float), fn.astype(float), tn.astype(float))
    return out


DEFAULT_GRID = np.round(np.arange(0.005, 1.0, 0.005), 3)


def selection_score(metric: str | None, task: str, y_true: np.ndarray, proba: np.ndarray) -> float:
    """Score of held-out probabilities used to rank configurations and early-stop: ``metric`` itself.

    Probability metrics score ``proba``; decision metrics of binary/multilabel tasks score the decisions
    at the best threshold of the grid (the model's threshold is tuned afterwards, so that is what it
    will reach); multiclass decision metrics score the arg-max.
    """
    m = get_metric(metric, task)
    proba = np.asarray(proba, dtype=float)
    if m.decision and task in ("binary", "multilabel"):
        p = proba[:, 1] if task == "binary" else proba
        s = decision_curve(m.name, task, y_true, p, DEFAULT_GRID)
        return float(np.nanmax(s)) if not np.isnan(s).all() else math.nan
    return score(m.name, task, y_true, proba)


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray, weights: np.ndarray | None = None) -> float:
    x = np.asarray(x, dtype=float)
    ok = ~np.isnan(x)
    if weights is not None:
        ok &= np.asarray(weights) > 0
    if not ok.any():
        return math.nan
    if weights is None:
        return float(x[ok].mean())
    w = np.asarray(weights, dtype=float)[ok]
    return float((x[ok] * w).sum() / w.sum())


def _prf_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision/recall/F1; nan where the class is absent from y_true and never predicted.

    A class with support but no predictions gets precision 0 (it missed every positive).
    """
    support = tp + fn
    predicted = tp + fp
    precision = _div(tp, predicted)
    precision = np.where((predicted == 0) & (support > 0), 0.0, precision)
    recall = _div(tp, support)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


def _indicator(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes), dtype=bool)
    out[np.arange(len(y)), y] = True
    return out


def _binary_curve_metric(y: np.ndarray, score: np.ndarray, kind: str) -> float:
    """ROC AUC or average precision of one class; nan unless both classes are present."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ok = ~np.isnan(score)
    y, score = y[ok], score[ok]
    if len(y) == 0 or y.all() or not y.any():
        return math.nan
    if kind == "roc_auc":
        return float(roc_auc_score(y, score))
    return float(average_precision_score(y, score))


def evaluate(
    y_true: np.ndarray,
    proba: np.ndarray,
    pred: np.ndarray,
    task: str,
    classes: Sequence[str],
    metric: str | None = None,
) -> dict[str, Any]:
    """Every score of the contract for one split.

    ``y_true``/``pred``: int class indices ``(n,)`` (binary, multiclass) or multi-hot ``(n, C)``
    (multilabel); ``proba``: ``(n, C)`` (binary: 2 columns ``[neg, pos]``). Rows whose ``proba`` is
    nan (images that failed to embed) are ignored. ``metric`` picks ``main``.
    """
    if task not in TASKS:
        raise HeadError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    classes = [str(c) for c in classes]
    C = len(classes)
    proba = np.asarray(proba, dtype=float).reshape(len(proba), -1) if len(proba) else np.zeros((0, C))
    y_true = np.asarray(y_true)
    pred = np.asarray(pred)
    keep = ~np.isnan(proba).any(axis=1) if len(proba) else np.zeros(0, dtype=bool)
    y_true, pred, proba = y_true[keep], pred[keep], proba[keep]
    n = len(y_true)

    if task == "multilabel":
        Yt = y_true.astype(bool).reshape(n, C)
        Yp = pred.astype(bool).reshape(n, C)
    else:
        Yt = _indicator(y_true.astype(int), C)
        Yp = _indicator(pred.astype(int), C)

    tp = (Yt & Yp).sum(0)
    fp = (~Yt & Yp).sum(0)
    fn = (Yt & ~Yp).sum(0)
    tn = (~Yt & ~Yp).sum(0)
    support = tp + fn
    precision, recall, f1 = _prf_from_counts(tp, fp, fn)

    out: dict[str, Any] = {"n": int(n)}
    if task == "multilabel":
        out["accuracy"] = float((Yt == Yp).all(1).mean()) if n else math.nan  # subset accuracy
        out["hamming_loss"] = float((Yt != Yp).mean()) if n else math.nan
        tnr = _div(tn, tn + fp)
        out["balanced_accuracy"] = _nanmean((recall + tnr) / 2)
    else:
        out["accuracy"] = float((y_true == pred).mean()) if n else math.nan
        out["balanced_accuracy"] = _nanmean(np.where(support > 0, recall, np.nan))

    averages: dict[str, tuple[float, float, float]] = {}
    if task == "binary":
        averages["binary"] = (float(precision[1]), float(recall[1]), float(f1[1]))
    mp, mr, mf = _prf_from_counts(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    averages["micro"] = (float(mp[0]), float(mr[0]), float(mf[0]))
    averages["macro"] = (_nanmean(precision), _nanmean(recall), _nanmean(f1))
    averages["weighted"] = (_nanmean(precision, support), _nanmean(recall, support), _nanmean(f1, support))
    if task == "multilabel":
        s_tp = (Yt & Yp).sum(1)
        sp, sr, sf = _prf_from_counts(s_tp, (~Yt & Yp).sum(1), (Yt & ~Yp).sum(1))
        averages["samples"] = (_nanmean(sp), _nanmean(sr), _nanmean(sf))
    for avg, (p_, r_, f_) in averages.items():
        out[f"precision_{avg}"] = p_
        out[f"recall_{avg}"] = r_
        out[f"f1_{avg}"] = f_

    auc_c = np.array([_binary_curve_metric(Yt[:, k], proba[:, k], "roc_auc") for k in range(C)])
    ap_c = np.array([_binary_curve_metric(Yt[:, k], proba[:, k], "ap") for k in range(C)])
    if task == "binary":
        out["roc_auc"] = float(auc_c[1])
        out["average_precision"] = float(ap_c[1])
    else:
        out["roc_auc"] = _nanmean(auc_c)  # macro over classes where it is defined
        out["average_precision"] = _nanmean(ap_c)  # multilabel: mAP

    if task == "multilabel":
        out["confusion_matrix"] = [[[int(tn[k]), int(fp[k])], [int(fn[k]), int(tp[k])]] for k in range(C)]
    else:
        cm = np.zeros((C, C), dtype=int)
        np.add.at(cm, (y_true.astype(int), pred.astype(int)), 1)
        out["confusion_matrix"] = cm.tolist()
        if task == "multiclass":
            off = [(int(cm[i, j]), i, j) for i in range(C) for j in range(C) if i != j and cm[i, j] > 0]
            off.sort(key=lambda t: (-t[0], t[1], t[2]))
            out["most_confused"] = [[classes[i], classes[j], c] for c, i, j in off[:10]]

    out["per_class"] = {
        classes[k]: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "roc_auc": float(auc_c[k]),
            "average_precision": float(ap_c[k]),
        }
        for k in range(C)
    }
    out["main"] = out[main_metric_key(metric, task)]
    return out


BOOTSTRAP = {"n_resamples": 1000, "level": 0.95, "method": "percentile", "unit": "test rows"}


def _weighted_curve_metric(y: np.ndarray, s: np.ndarray, W: np.ndarray, kind: str) -> np.ndarray:
    """ROC AUC or average precision of one class under row weights ``W (B, n)`` -> ``(B,)``.

    Same definitions as sklearn (ties share credit; AP is the step-wise sum of precision x recall
    increments), evaluated for every bootstrap resample at once.
    """
    order = np.argsort(-s, kind="stable") if kind == "average_precision" else np.argsort(s, kind="stable")
    ss, ys = s[order], y[order].astype(float)
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    Ws = W[:, order]
    Pg = np.add.reduceat(Ws * ys, starts, axis=1)
    Ng = np.add.reduceat(Ws * (1 - ys), starts, axis=1)
    P, N = Pg.sum(1), Ng.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "roc_auc":
            below = np.cumsum(Ng, 1) - Ng
            val = (Pg * (below + 0.5 * Ng)).sum(1) / (P * N)
        else:
            tpc, fpc = np.cumsum(Pg, 1), np.cumsum(Ng, 1)
            prec = np.where(tpc + fpc > 0, tpc / (tpc + fpc), 0.0)
            val = (Pg * prec).sum(1) / P
    return np.where((P > 0) & (N > 0), val, np.nan)


def _weighted_scores(key: str, task: str, Yt: np.ndarray, Yp: np.ndarray, proba: np.ndarray,
                     W: np.ndarray) -> np.ndarray:
    """``evaluate()`` key for every row-weighting in ``W (B, n)``: a bootstrap resample is a weighting."""
    if key in ("roc_auc", "average_precision"):
        cols = [1] if task == "binary" else range(Yt.shape[1])
        per = np.stack([_weighted_curve_metric(Yt[:, k], proba[:, k], W, key) for k in cols], 1)
        return _nanmean_axis(per)
    if task == "multilabel" and key == "accuracy":
        return W @ (Yt == Yp).all(1) / W.sum(1)
    if key == "f1_samples":
        den = (2 * (Yt & Yp) + (Yt ^ Yp)).sum(1)
        ok = den > 0
        f = np.where(ok, 2 * (Yt & Yp).sum(1) / np.maximum(den, 1), 0.0)
        return (W @ f) / np.where(W @ ok > 0, W @ ok, np.nan)
    tp, fp = W @ (Yt & Yp), W @ (~Yt & Yp)
    fn, tn = W @ (Yt & ~Yp), W @ (~Yt & ~Yp)
    if key in ("accuracy", "balanced_accuracy"):
        key = f"{key}_{'multilabel' if task == 'multilabel' else 'single'}"
    return _counts_metric(key, tp, fp, fn, tn)


def bootstrap_ci(metric: str | None, task: str, y_true: np.ndarray, proba: np.ndarray, pred: np.ndarray,
                 n_resamples: int = BOOTSTRAP["n_resamples"], seed: int = 0,
                 level: float = BOOTSTRAP["level"]) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``metric`` over resampled rows (seeded); ``None`` if undefined.

    Rows whose ``proba`` is nan are left out, as in :func:`evaluate`. Vectorised: each chunk of
    resamples is a matrix of multinomial row counts, and every metric is computed from weighted counts.
    """
    key = get_metric(metric, task).keys[task]
    proba = np.asarray(proba, dtype=float)
    keep = ~np.isnan(proba).any(1) if len(proba) else np.zeros(0, dtype=bool)
    y_true, pred, proba = np.asarray(y_true)[keep], np.asarray(pred)[keep], proba[keep]
    n, C = proba.shape if proba.ndim == 2 else (0, 0)
    if n < 2:
        return None
    if task == "multilabel":
        Yt, Yp = y_true.astype(bool).reshape(n, C), pred.astype(bool).reshape(n, C)
    else:
        Yt, Yp = _indicator(y_true.astype(int), C), _indicator(pred.astype(int), C)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
    vals = []
    for start in range(0, n_resamples, chunk):
        W = rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_resamples - start)).astype(float)
        vals.append(_weighted_scores(key, task, Yt, Yp, proba, W))
    v = np.concatenate(vals)
    v = v[~np.isnan(v)]
    if len(v) < n_resamples // 2:
        return None
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def jsonable(obj: Any) -> Any:
    """Recursively turn numpy values into Python ones and nan/inf into ``None`` (JSON ``null``)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _fmt_ci(ci: Any) -> str:
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return "-"
    return f"{ci[0]:.3f}-{ci[1]:.3f}"


def format_table(results: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]) -> str:
    """A short plain-text table: one row per metrics dict (as written to metrics.json).

    Accepts a list of metrics dicts or a ``{name: metrics}`` mapping; columns are run, head, metric,
    train/val/test main score, the test score's 95% bootstrap interval, gap and fit seconds.
    """
    if isinstance(results, Mapping):
        results = [dict(m, run=m.get("run", k)) for k, m in results.items()]
    header = ["run", "head", "metric", "train", "val", "test", "test 95% CI", "gap", "fit s"]
    rows = []
    for m in results:
        scores = m.get("scores", {})
        fit_s = m.get("fit_seconds")
        rows.append([
            str(m.get("run", "")),
            str(m.get("head", "")),
            str(m.get("metric", "")),
            *(_fmt((scores.get(s) or {}).get("main")) for s in ("train", "val", "test")),
            _fmt_ci((scores.get("test") or {}).get("main_ci")),
            _fmt(m.get("gap")),
            f"{fit_s:.1f}" if isinstance(fit_s, (int, float)) else "-",
        ])
    if not any(r[0] for r in rows):
        header, rows = header[1:], [r[1:] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)
