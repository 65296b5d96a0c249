"""Classification metrics for binary, multiclass and multilabel heads, safe for JSON.

Undefined values (a class absent from ``y_true``, a metric with no positives) are ``nan`` here and
become ``null`` through :func:`jsonable`; nothing here emits sklearn's undefined-metric warnings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from featpipe.data.manifest import TASKS
from featpipe.errors import HeadError

# user-facing metric name -> key in the evaluate() dict, per task
_MAIN_KEYS: dict[str, dict[str, str]] = {
    "accuracy": {"binary": "accuracy", "multiclass": "accuracy", "multilabel": "accuracy"},
    "balanced_accuracy": {"binary": "balanced_accuracy", "multiclass": "balanced_accuracy",
                          "multilabel": "balanced_accuracy"},
    "f1": {"binary": "f1_binary", "multiclass": "f1_macro", "multilabel": "f1_micro"},
    "micro_f1": {"binary": "f1_micro", "multiclass": "f1_micro", "multilabel": "f1_micro"},
    "macro_f1": {"binary": "f1_macro", "multiclass": "f1_macro", "multilabel": "f1_macro"},
    "weighted_f1": {"binary": "f1_weighted", "multiclass": "f1_weighted", "multilabel": "f1_weighted"},
    "samples_f1": {"multilabel": "f1_samples"},
    "roc_auc": {"binary": "roc_auc", "multiclass": "roc_auc", "multilabel": "roc_auc"},
    "average_precision": {"binary": "average_precision", "multiclass": "average_precision",
                          "multilabel": "average_precision"},
    "map": {"binary": "average_precision", "multiclass": "average_precision", "multilabel": "average_precision"},
}
METRICS = tuple(_MAIN_KEYS)
DEFAULT_METRIC = {"binary": "f1", "multiclass": "accuracy", "multilabel": "micro_f1"}


def main_metric_key(metric: str | None, task: str) -> str:
    """Key of ``evaluate()``'s dict that holds the main metric ``metric`` for ``task``."""
    metric = metric or DEFAULT_METRIC[task]
    keys = _MAIN_KEYS.get(metric)
    if keys is None:
        raise HeadError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if task not in keys:
        raise HeadError(f"metric {metric!r} is not defined for a {task} task")
    return keys[task]


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


def format_table(results: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]) -> str:
    """A short plain-text table: one row per metrics dict (as written to metrics.json).

    Accepts a list of metrics dicts or a ``{name: metrics}`` mapping; columns are run, head, metric,
    train/val/test main score, gap and fit seconds.
    """
    if isinstance(results, Mapping):
        results = [dict(m, run=m.get("run", k)) for k, m in results.items()]
    header = ["run", "head", "metric", "train", "val", "test", "gap", "fit s"]
    rows = []
    for m in results:
        scores = m.get("scores", {})
        fit_s = m.get("fit_seconds")
        rows.append([
            str(m.get("run", "")),
            str(m.get("head", "")),
            str(m.get("metric", "")),
            *(_fmt((scores.get(s) or {}).get("main")) for s in ("train", "val", "test")),
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
