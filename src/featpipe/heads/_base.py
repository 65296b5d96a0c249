"""Shared machinery of every head: input checks, preprocessing, validation search, one-vs-rest.

A head is a scikit-learn style estimator. ``fit(X, y, X_val, y_val)`` searches its hyper-parameter
grid using only train (fitting) and val (scoring), keeps the held-out ``val_proba_`` of the chosen
configuration (for threshold tuning and honest validation scores) and, with ``refit="train+val"``,
refits the chosen configuration on train+val. Multilabel tasks are one-vs-rest: one search per label.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from featpipe.data.manifest import TASKS
from featpipe.errors import HeadError

PREPROCESS = ("standardize", "l2", "none")
REFIT = ("train", "train+val")
CLASS_WEIGHT = (None, "balanced")
SELECTION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


class ConstantProba:
    """Predicts a fixed positive rate: the stand-in for a label too rare to fit."""

    def __init__(self, p: float):
        self.p = float(p)

    def __repr__(self) -> str:
        return f"ConstantProba(p={self.p:.4g})"


class Preprocessor:
    """``standardize`` (train mean/std), ``l2`` (unit-norm rows) or ``none``; fitted on the fit rows.

    With ``pca=k`` the result is then projected on its top ``k`` principal components (seeded
    randomized SVD), used by tree heads, which are slow and no better on 1000+ dense dimensions.
    """

    def __init__(self, kind: str = "standardize", pca: int | None = None, seed: int = 0):
        self.kind = kind
        self.pca = pca
        self.seed = seed

    def fit(self, X: np.ndarray) -> Preprocessor:
        if self.kind == "standardize":
            self.mean_ = X.mean(0)
            std = X.std(0)
            self.scale_ = np.where(std > 1e-12, std, 1.0)
        self.pca_ = None
        if self.pca and X.shape[1] > self.pca and len(X) > self.pca:
            from sklearn.decomposition import PCA

            self.pca_ = PCA(self.pca, svd_solver="randomized", random_state=self.seed).fit(self._scale(X))
        return self

    def _scale(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.kind == "standardize":
            return (X - self.mean_) / self.scale_
        if self.kind == "l2":
            n = np.linalg.norm(X, axis=1, keepdims=True)
            return X / np.where(n > 1e-12, n, 1.0)
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        Xs = self._scale(X)
        pca = getattr(self, "pca_", None)
        return pca.transform(Xs) if pca is not None else Xs


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """``n / (K * n_k)`` per row: for two classes the positive/negative weight ratio is negatives/positives."""
    classes, counts = np.unique(y, return_counts=True)
    w = len(y) / (len(classes) * counts.astype(float))
    return w[np.searchsorted(classes, y)]


def _log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
    return float(-np.log(p).mean())


def _average_precision(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    if y.all() or not y.any():
        return math.nan
    return float(average_precision_score(y, score))


def selection_score(y: np.ndarray, proba: np.ndarray, binary: bool, metric: str) -> tuple[float, float]:
    """Validation score used to rank configurations: ``(primary, -log_loss)``, larger is better.

    Binary problems (and each label of a multilabel task) use average precision, which does not depend
    on the decision threshold tuned afterwards; multiclass uses ``metric`` on the arg-max.
    """
    nll = _log_loss(y, proba)
    if binary:
        ap = _average_precision(y == 1, proba[:, 1])
        return (-nll if math.isnan(ap) else ap), -nll
    pred = proba.argmax(1)
    if metric == "balanced_accuracy":
        present = np.unique(y)
        primary = float(np.mean([(pred[y == k] == k).mean() for k in present]))
    elif metric == "macro_f1":
        f1s = []
        for k in np.unique(np.concatenate([y, pred])):
            tp = np.sum((pred == k) & (y == k))
            f1s.append(2 * tp / (np.sum(pred == k) + np.sum(y == k)))
        primary = float(np.mean(f1s))
    else:
        primary = float((pred == y).mean())
    return primary, -nll


def _check_X(X: Any, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise HeadError(f"{name} features must be a 2-D array (rows x features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise HeadError(f"{name} features contain nan or inf values")
    return X


class BaseHead(ClassifierMixin, BaseEstimator):
    """Base of every head; subclasses define the grid and how one configuration is fitted."""

    name = "base"

    # -- to implement -------------------------------------------------------------------------------
    def _grid(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _fit_one(self, params: dict, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, n_classes: int,
                 X_val: np.ndarray | None, y_val: np.ndarray | None, warm: Any = None) -> Any:
        raise NotImplementedError

    def _proba_one(self, model: Any, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _refine(self, search: list[dict], round_: int) -> list[dict[str, Any]]:
        """More configurations to try once the grid is scored (logistic: a finer C grid)."""
        return []

    def _refit_params(self, params: dict, model: Any) -> dict[str, Any]:
        """Parameters for the train+val refit (early-stopped heads fix their iteration count)."""
        return dict(params)

    # -- common -------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.task not in TASKS:
            raise HeadError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.preprocess not in PREPROCESS:
            raise HeadError(f"unknown preprocessing {self.preprocess!r}; expected one of {', '.join(PREPROCESS)}")
        if self.refit not in REFIT:
            raise HeadError(f"unknown refit {self.refit!r}; expected one of {', '.join(REFIT)}")
        if self.class_weight not in CLASS_WEIGHT:
            raise HeadError(f"unknown class_weight {self.class_weight!r}; expected None or 'balanced'")

    def fit(self, X, y, X_val=None, y_val=None, n_classes: int | None = None) -> BaseHead:
        """Search on (X, y) scored on (X_val, y_val); ``y`` holds class indices or a multi-hot matrix."""
        t0 = time.perf_counter()
        self._check_params()
        X = _check_X(X, "train")
        if X_val is None or y_val is None or len(X_val) == 0:
            raise HeadError("the validation split is empty: heads are tuned on validation, add a val split")
        X_val = _check_X(X_val, "validation")
        if X_val.shape[1] != X.shape[1]:
            raise HeadError(f"train has {X.shape[1]} features but validation has {X_val.shape[1]}")
        if len(X) == 0:
            raise HeadError("the train split is empty")
        y = np.asarray(y)
        y_val = np.asarray(y_val)
        if len(y) != len(X) or len(y_val) != len(X_val):
            raise HeadError("features and labels have different numbers of rows")
        self.n_features_in_ = X.shape[1]
        self.skipped_labels_: list[dict[str, Any]] = []

        pre = Preprocessor(self.preprocess, getattr(self, "pca", None), self.seed).fit(X)
        Xt, Xv = pre.transform(X), pre.transform(X_val)
        if self.task == "multilabel":
            y, y_val = y.astype(np.uint8), y_val.astype(np.uint8)
            if y.ndim != 2 or y_val.ndim != 2 or y.shape[1] != y_val.shape[1]:
                raise HeadError("multilabel targets must be multi-hot matrices with the same number of columns")
            self.classes_ = np.arange(y.shape[1])
            self._fit_multilabel(X, y, X_val, y_val, Xt, Xv, pre)
        else:
            y, y_val = y.astype(np.int64).ravel(), y_val.astype(np.int64).ravel()
            C = int(n_classes if n_classes is not None else max(y.max(), y_val.max()) + 1)
            if self.task == "binary" and C != 2:
                raise HeadError(f"a binary task needs exactly 2 classes, got {C}")
            self.classes_ = np.arange(C)
            self._fit_single(X, y, X_val, y_val, Xt, Xv, pre, C)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _search(self, Xt, y, Xv, yv, binary: bool):
        """Fit every configuration on train, score on val; returns (best model, params, search list)."""
        sw = balanced_weights(y) if self.class_weight == "balanced" else None
        K = int(y.max()) + 1
        search: list[dict[str, Any]] = []
        models: list[Any] = []
        todo = self._grid()
        warm = None
        round_ = 0
        while todo:
            for params in todo:
                model = self._fit_one(params, Xt, y, sw, K, Xv, yv, warm)
                warm = model
                score = selection_score(yv, self._proba_one(model, Xv), binary, self._selection_metric())
                entry = {"params": self._record_params(params, model), "val_score": score[0],
                         "val_log_loss": -score[1]}
                search.append(entry)
                models.append((score, model, params))
            round_ += 1
            todo = [p for p in self._refine(search, round_) if p not in [m[2] for m in models]]
        best = max(range(len(models)), key=lambda i: (models[i][0], -i))
        _, model, params = models[best]
        return model, params, search, best

    def _selection_metric(self) -> str:
        m = getattr(self, "metric", None) or "accuracy"
        return m if m in SELECTION_METRICS else "accuracy"

    def _record_params(self, params: dict, model: Any) -> dict[str, Any]:
        return dict(params)

    def _fit_single(self, X, y, X_val, y_val, Xt, Xv, pre, C: int) -> None:
        present = np.unique(y)
        if len(present) < 2:
            raise HeadError(f"the train split has only one class (index {int(present[0])}): need at least two")
        for k in sorted(set(range(C)) - set(present.tolist())):
            self.skipped_labels_.append({"label": int(k), "reason": "no training examples: never predicted"})
        remap = np.full(C, -1)
        remap[present] = np.arange(len(present))
        self.present_ = present
        yr = remap[y]
        val_known = remap[y_val] >= 0  # val rows of a class unseen in train cannot be scored by the search
        if not val_known.any():
            raise HeadError("no validation row belongs to a class present in train")
        binary = len(present) == 2
        model, params, search, best = self._search(Xt, yr, Xv[val_known], remap[y_val][val_known], binary)
        self.search_ = search
        self.params_ = search[best]["params"]
        self.best_val_score_ = search[best]["val_score"]
        self.val_proba_ = self._expand(self._proba_one(model, Xv), C)
        if self.refit == "train+val":
            pre = Preprocessor(self.preprocess, getattr(self, "pca", None), self.seed).fit(np.vstack([X, X_val]))
            Xa = pre.transform(np.vstack([X, X_val]))
            ya = remap[np.concatenate([y, y_val])]
            keep = ya >= 0
            sw = balanced_weights(ya[keep]) if self.class_weight == "balanced" else None
            model = self._fit_one(self._refit_params(params, model), Xa[keep], ya[keep], sw, len(present),
                                  None, None)
        self.preprocessor_ = pre
        self.model_ = model

    def _expand(self, proba: np.ndarray, C: int) -> np.ndarray:
        out = np.zeros((len(proba), C))
        out[:, self.present_] = proba
        return out

    def _fit_multilabel(self, X, Y, X_val, Y_val, Xt, Xv, pre) -> None:
        C = Y.shape[1]
        self.estimators_: list[Any] = []
        self.search_ = []
        self.params_ = {}
        self.best_val_score_ = {}
        val_proba = np.zeros((len(X_val), C))
        if self.refit == "train+val":
            Xall = np.vstack([X, X_val])
            pre_all = Preprocessor(self.preprocess, getattr(self, "pca", None), self.seed).fit(Xall)
            Xa = pre_all.transform(Xall)
            Ya = np.vstack([Y, Y_val])
        for k in range(C):
            ytr, yva = Y[:, k].astype(np.int64), Y_val[:, k].astype(np.int64)
            pos_tr, neg_tr, pos_va = int(ytr.sum()), int((1 - ytr).sum()), int(yva.sum())
            reason = None
            if pos_tr < 2:
                reason = f"{pos_tr} positive(s) in train (need 2)"
            elif neg_tr < 2:
                reason = f"{neg_tr} negative(s) in train (need 2)"
            elif pos_va == 0:
                reason = "no positive in validation: cannot tune"
            if reason:
                prior = float(Ya[:, k].mean()) if self.refit == "train+val" else float(ytr.mean())
                self.skipped_labels_.append({"label": k, "reason": reason + "; predicted with constant prior",
                                             "prior": prior})
                self.estimators_.append(ConstantProba(prior))
                val_proba[:, k] = float(ytr.mean())
                self.params_[k] = None
                continue
            model, params, search, best = self._search(Xt, ytr, Xv, yva, True)
            self.search_.extend({"label": k, **s} for s in search)
            self.params_[k] = search[best]["params"]
            self.best_val_score_[k] = search[best]["val_score"]
            val_proba[:, k] = self._proba_one(model, Xv)[:, 1]
            if self.refit == "train+val":
                ya = Ya[:, k].astype(np.int64)
                sw = balanced_weights(ya) if self.class_weight == "balanced" else None
                model = self._fit_one(self._refit_params(params, model), Xa, ya, sw, 2, None, None)
            self.estimators_.append(model)
        self.val_proba_ = val_proba
        self.preprocessor_ = pre_all if self.refit == "train+val" else pre

    def predict_proba(self, X) -> np.ndarray:
        """``(n, C)`` probabilities; binary has 2 columns, multilabel has independent columns."""
        X = _check_X(X, "input")
        if X.shape[1] != self.n_features_in_:
            raise HeadError(f"expected {self.n_features_in_} features per row, got {X.shape[1]}")
        Xt = self.preprocessor_.transform(X)
        if self.task == "multilabel":
            out = np.zeros((len(X), len(self.classes_)))
            for k, est in enumerate(self.estimators_):
                out[:, k] = est.p if isinstance(est, ConstantProba) else self._proba_one(est, Xt)[:, 1]
            return out
        return self._expand(self._proba_one(self.model_, Xt), len(self.classes_))

    def predict(self, X) -> np.ndarray:
        """Arg-max class indices (single-label) or ``proba >= 0.5`` (multilabel); see thresholds for tuning."""
        p = self.predict_proba(X)
        if self.task == "multilabel":
            return (p >= 0.5).astype(np.uint8)
        return p.argmax(1)
