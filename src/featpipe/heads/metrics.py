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


# -- chance level: the best constant predictor ------------------------------------------------------

def _label_set_name(S: np.ndarray, classes: Sequence[str]) -> str:
    if not S.any():
        return "no label"
    if S.all():
        return "every label"
    return "{" + ", ".join(f"'{classes[k]}'" for k in np.flatnonzero(S)) + "}"


def _multilabel_constant_candidates(Y: np.ndarray) -> list[np.ndarray]:
    """Label sets among which the best constant prediction lies for every multilabel decision metric."""
    n, C = Y.shape
    pos = Y.sum(0)
    order = np.argsort(-pos, kind="stable")
    cands = []
    for m in range(C + 1):  # micro-F1: for m predicted labels, the m most frequent maximise the true positives
        S = np.zeros(C, bool)
        S[order[:m]] = True
        cands.append(S)
    cands.append(pos > 0)  # macro/weighted F1: separable per label; a label with positives gains, others lose
    sets, counts = np.unique(Y, axis=0, return_counts=True)
    cands.append(sets[counts.argmax()].astype(bool))  # subset accuracy: the most common label set
    size = Y.sum(1)
    for m in range(1, C + 1):  # samples-F1 at m labels: sum_i 2|S & Y_i| / (m + |Y_i|) is separable per label
        w = (Y / (m + size)[:, None]).sum(0)
        S = np.zeros(C, bool)
        S[np.argsort(-w, kind="stable")[:m]] = True
        cands.append(S)
    return cands


def best_constant(metric: str | None, task: str, y_true: np.ndarray, classes: Sequence[str]) -> dict[str, Any] | None:
    """Best score of a constant predictor on these rows (the chance level), and what it predicts.

    Decision metrics search the constant predictions that can be best: every class (single-label); for
    multilabel, the label sets optimal for some metric (the m most frequent labels for micro-F1, every
    label with a positive for macro/weighted F1, the most common label set for subset accuracy, the best
    m labels for samples-F1). Probability metrics score one constant for every row (ROC AUC 0.5, AP the
    share of positives). ``uniform`` is 1/K, a uniform random guess's expected accuracy (single-label).
    """
    m = get_metric(metric, task)
    key = m.keys[task]
    y = np.asarray(y_true)
    C = len(classes)
    n = len(y)
    if n == 0 or C == 0:
        return None
    out: dict[str, Any] = {"n": int(n)}
    if task != "multilabel" and key == "accuracy":
        out["uniform"] = 1.0 / C
    flat = np.full((n, C), 1.0 / C)
    if m.needs_proba:
        value = sklearn_score(key, task, y, flat, flat.argmax(1))
        what = "ROC AUC 0.5" if key == "roc_auc" else "AP = the share of positives"
        out.update(value=value, rule=f"the same score for every image ({what})")
        return out if not math.isnan(value) else None
    if task == "multilabel":
        Y = y.astype(bool).reshape(n, C)
        seen: set[bytes] = set()
        cands = []
        for S in _multilabel_constant_candidates(Y):
            if S.tobytes() not in seen:
                seen.add(S.tobytes())
                cands.append((f"always {_label_set_name(S, classes)}", np.tile(S.astype(np.uint8), (n, 1))))
    else:
        cands = [(f"always '{classes[k]}'", np.full(n, k)) for k in range(C)]
    scored = [(sklearn_score(key, task, y, flat, pred), name) for name, pred in cands]
    scored = [(v, name) for v, name in scored if not math.isnan(v)]
    if not scored:
        return None
    value, rule = max(scored, key=lambda t: t[0])  # the first of equals
    ties = sum(1 for v, _ in scored if abs(v - value) <= 1e-12) - 1
    if ties:
        rule += f" (as good as {ties} other constant prediction{'s' if ties > 1 else ''})"
    out.update(value=float(value), rule=rule)
    return out


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


def _decision_matrices(task: str, y_true: np.ndarray, pred: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth and decisions as ``(n, C)`` indicator matrices (multilabel: already multi-hot)."""
    n = len(y_true)
    if task == "multilabel":
        return y_true.astype(bool).reshape(n, C), pred.astype(bool).reshape(n, C)
    return _indicator(y_true.astype(int), C), _indicator(pred.astype(int), C)


def _resample_weights(n: int, n_resamples: int, seed: int):
    """Seeded bootstrap resamples of ``n`` rows as multinomial row-count matrices, in chunks ``(b, n)``."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
    for start in range(0, n_resamples, chunk):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_resamples - start)).astype(float)


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
    if n < 2 or n_resamples < 1:  # 0 resamples: no interval asked for
        return None
    Yt, Yp = _decision_matrices(task, y_true, pred, C)
    v = np.concatenate([_weighted_scores(key, task, Yt, Yp, proba, W)
                        for W in _resample_weights(n, n_resamples, seed)])
    v = v[~np.isnan(v)]
    if len(v) < n_resamples // 2:
        return None
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [a, 100 - a])
    return float(lo), float(hi)


def paired_bootstrap(metric: str | None, task: str, y_true: np.ndarray, a: tuple[np.ndarray, np.ndarray],
                     b: tuple[np.ndarray, np.ndarray], n_resamples: int = BOOTSTRAP["n_resamples"],
                     seed: int = 0, level: float = BOOTSTRAP["level"]) -> dict[str, Any] | None:
    """``metric`` of predictions ``a`` minus ``b`` on the same rows, with a paired percentile bootstrap interval.

    ``a`` and ``b`` are ``(proba, pred)`` for the rows of ``y_true``, in the same order. Each resample
    scores both on the same drawn rows, so what they share (rows both get right or wrong) cancels: the
    interval is the difference's own, narrower than two separate intervals suggest. Rows where either
    ``proba`` is nan are left out. ``None`` when the difference is undefined on too many resamples.
    """
    key = get_metric(metric, task).keys[task]
    pa, pb = np.asarray(a[0], dtype=float), np.asarray(b[0], dtype=float)
    if pa.shape != pb.shape or len(pa) != len(y_true):
        raise HeadError(f"paired comparison needs the same rows: shapes {pa.shape} and {pb.shape} "
                        f"for {len(y_true)} labels")
    keep = ~(np.isnan(pa).any(1) | np.isnan(pb).any(1)) if len(pa) else np.zeros(0, dtype=bool)
    y = np.asarray(y_true)[keep]
    pa, pb = pa[keep], pb[keep]
    n, C = pa.shape if pa.ndim == 2 else (0, 0)
    if n < 2:
        return None
    Yt, Ya = _decision_matrices(task, y, np.asarray(a[1])[keep], C)
    _, Yb = _decision_matrices(task, y, np.asarray(b[1])[keep], C)
    ones = np.ones((1, n))
    diff = float(_weighted_scores(key, task, Yt, Ya, pa, ones)[0] - _weighted_scores(key, task, Yt, Yb, pb, ones)[0])
    v = np.concatenate([_weighted_scores(key, task, Yt, Ya, pa, W) - _weighted_scores(key, task, Yt, Yb, pb, W)
                        for W in _resample_weights(n, n_resamples, seed)])
    v = v[~np.isnan(v)]
    if math.isnan(diff) or len(v) < n_resamples // 2:
        return None
    q = (1 - level) / 2 * 100
    lo, hi = np.percentile(v, [q, 100 - q])
    return {"diff": diff, "ci": [float(lo), float(hi)], "n": int(n), "n_resamples": n_resamples, "seed": seed,
            "level": level, "method": "paired percentile bootstrap over the same test rows"}


# a test split below either count gets a warning beside its score and interval (the percentile
# bootstrap of 3 rows can print "1.000-1.000"; a class with 2 rows makes its per-class scores noise)
SMALL_SAMPLE = {"rows": 30, "per_class": 5}


def small_sample(scores: Mapping[str, Any] | None, task: str, split: str = "test") -> str | None:
    """Why a split's scores (an :func:`evaluate` dict) and their interval rest on too few rows, or None."""
    if not scores:
        return None
    why = []
    n = scores.get("n")
    if isinstance(n, (int, np.integer)) and n < SMALL_SAMPLE["rows"]:
        why.append(f"{n} {split} row{'s' if n != 1 else ''} (fewer than {SMALL_SAMPLE['rows']})")
    unit = "positive " if task == "multilabel" else ""
    kind = "label" if task == "multilabel" else "class"
    few = sorted(((int(v.get("support") or 0), str(c)) for c, v in (scores.get("per_class") or {}).items()
                  if int(v.get("support") or 0) < SMALL_SAMPLE["per_class"]))
    if len(few) == 1:
        why.append(f"{kind} '{few[0][1]}' has {few[0][0]} {unit}{split} row{'s' if few[0][0] != 1 else ''} "
                   f"(fewer than {SMALL_SAMPLE['per_class']})")
    elif few:
        kinds = "labels" if task == "multilabel" else "classes"
        why.append(f"{len(few)} {kinds} have fewer than {SMALL_SAMPLE['per_class']} {unit}{split} rows "
                   f"(fewest: '{few[0][1]}', {few[0][0]})")
    return "; ".join(why) or None


def calibration(task: str, y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> dict[str, Any] | None:
    """Reliability bins and expected calibration error (ECE) of predicted probabilities.

    Multiclass: top-label confidence against whether the arg-max class is right; binary: P(positive)
    against the label; multilabel: every (image, label) probability against that label, pooled.
    Equal-width bins; ECE = sum over bins of (share of rows) x |observed frequency - mean probability|.
    Hand-written: sklearn's ``calibration_curve`` drops the bin counts the ECE weighs by.
    """
    proba = np.asarray(proba, dtype=float)
    y = np.asarray(y_true)
    if proba.ndim != 2 or not len(proba):
        return None
    keep = ~np.isnan(proba).any(1)
    proba, y = proba[keep], y[keep]
    if task == "multilabel":
        conf, hit, kind = proba.ravel(), y.astype(bool).reshape(proba.shape).ravel(), "per-label probability, pooled"
    elif task == "binary":
        conf, hit, kind = proba[:, 1], y.astype(int) == 1, "P(positive)"
    else:
        conf, hit, kind = proba.max(1), proba.argmax(1) == y.astype(int), "top-label confidence"
    if not len(conf):
        return None
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    mean_conf = np.bincount(b, weights=conf, minlength=n_bins)
    freq = np.bincount(b, weights=hit.astype(float), minlength=n_bins)
    ok = count > 0
    mean_conf[ok] /= count[ok]
    freq[ok] /= count[ok]
    ece = float((count[ok] / count.sum() * np.abs(freq[ok] - mean_conf[ok])).sum())
    bins = [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "confidence": float(mean_conf[i]),
             "frequency": float(freq[i]), "count": int(count[i])} for i in np.flatnonzero(ok)]
    return {"ece": ece, "kind": kind, "n": int(len(conf)), "n_bins": n_bins, "bins": bins}


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
    train/val/test main score, the test score's 95% bootstrap interval, gap and fit seconds. A test
    split too small to trust (:func:`small_sample`) marks its interval with ``!`` and says why below.
    """
    if isinstance(results, Mapping):
        results = [dict(m, run=m.get("run", k)) for k, m in results.items()]
    header = ["run", "head", "metric", "train", "val", "test", "test 95% CI", "gap", "fit s"]
    rows = []
    warnings_: dict[str, str] = {}
    for m in results:
        scores = m.get("scores", {})
        fit_s = m.get("fit_seconds")
        test = scores.get("test") or {}
        small = small_sample(test, str(m.get("task", "")))
        if small:
            warnings_.setdefault(str(m.get("run", "")) or str(m.get("head", "")), small)
        rows.append([
            str(m.get("run", "")),
            str(m.get("head", "")),
            str(m.get("metric", "")),
            *(_fmt((scores.get(s) or {}).get("main")) for s in ("train", "val", "test")),
            _fmt_ci(test.get("main_ci")) + (" !" if small else ""),
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
    for who, why in warnings_.items():
        lines.append(f"! {who}: small test set: {why}; its test scores and intervals are not reliable")
    return "\n".join(lines)
