"""Shared machinery of every head: input checks, preprocessing, validation search, one-vs-rest.

A head is a scikit-learn style estimator. ``fit(X, y, X_val, y_val)`` searches its hyper-parameter
grid using only train (fitting) and val (scoring) -- or, with ``cv=K``, K-fold CV over train+val -- and
ranks configurations (and early-stops) by ``metric`` through :func:`featpipe.heads.metrics.selection_score`.
With ``cv=None`` a validation split too small to select on (see :func:`small_validation`) is replaced by
``oof_folds``-fold CV over train+val (per label in multilabel tasks); ``cv=0`` always uses the split.
It keeps the held-out ``val_proba_`` of the chosen configuration and, with ``refit="train+val"`` (the
default, as scikit-learn's searches refit on all their rows), refits that configuration on train+val and
keeps ``oof_proba_``: its out-of-fold probabilities over train+val, which thresholds of the refit model
are tuned on. Multilabel tasks are one-vs-rest: one search per label,
each by the label's own form of the metric (``Metric.per_label``).
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from featpipe.data.manifest import TASKS
from featpipe.errors import HeadError
from featpipe.heads.metrics import get_metric, selection_score

PREPROCESS = ("standardize", "l2", "none")
REFIT = ("train", "train+val")
DEFAULT_REFIT = "train+val"
CLASS_WEIGHT = (None, "balanced")
# Below these a validation split cannot select: on fewer than 30 rows (where the report calls a score a
# small sample) one row moves accuracy by > 3 points and configurations tie; a class, or a label's
# positives or negatives, with fewer than 5 rows decides its F1 / recall by single rows.
MIN_VAL_ROWS = 30
MIN_VAL_PER_CLASS = 5


def most_folds(y: np.ndarray, y_val: np.ndarray) -> int:
    """The most stratified folds train+val allows: its largest stratum (class, or rarest label) in rows."""
    pool = np.vstack([y, y_val]) if y.ndim == 2 else np.concatenate([y, y_val])
    return int(np.unique(_rarest_label(pool) if pool.ndim == 2 else pool, return_counts=True)[1].max())


def small_validation(y: np.ndarray, y_val: np.ndarray, folds: int) -> tuple[np.ndarray, str | None]:
    """Which groups the validation split is too small to select on, where train+val can make ``folds`` folds.

    Single-label (class indices): one flag for the whole task. Multilabel (0/1 matrices): one flag per
    label. Returns the flags and a one-line reason (``None`` when nothing is too small); classes and
    labels are written ``(index i)``.
    """
    n_val = len(y_val)
    few_rows = f"the validation split has {n_val} rows (fewer than {MIN_VAL_ROWS})"
    if y.ndim == 2:
        pool = np.vstack([y, y_val]).astype(bool)
        pos, neg = pool.sum(0), (~pool).sum(0)
        vpos, vneg = y_val.astype(bool).sum(0), (~y_val.astype(bool)).sum(0)
        small = (pos >= folds) & (neg >= folds) & ((n_val < MIN_VAL_ROWS) | (vpos < MIN_VAL_PER_CLASS)
                                                    | (vneg < MIN_VAL_PER_CLASS))
        if not small.any():
            return small, None
        if n_val < MIN_VAL_ROWS:
            return small, few_rows
        idx = np.flatnonzero(small)
        names = ", ".join(f"(index {i})" for i in idx[:5]) + (f" and {len(idx) - 5} more" if len(idx) > 5 else "")
        return small, (f"label{'s' if len(idx) > 1 else ''} {names} ha{'ve' if len(idx) > 1 else 's'} fewer than "
                       f"{MIN_VAL_PER_CLASS} validation positives or negatives")
    pool_counts = np.bincount(np.concatenate([y, y_val]))
    val_counts = np.bincount(y_val, minlength=len(pool_counts))
    if pool_counts.sum() < folds:
        return np.zeros(1, bool), None
    if n_val < MIN_VAL_ROWS:
        return np.ones(1, bool), few_rows
    short = np.flatnonzero((pool_counts >= folds) & (val_counts < MIN_VAL_PER_CLASS))
    if not len(short):
        return np.zeros(1, bool), None
    more = f" (and {len(short) - 1} more classes)" if len(short) > 1 else ""
    return np.ones(1, bool), (f"class (index {short[0]}) has {val_counts[short[0]]} validation rows (fewer than "
                              f"{MIN_VAL_PER_CLASS}){more}")


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


def one_blas_thread() -> Any:
    """Context in which BLAS libraries run single-threaded, around every head fit.

    scipy >= 1.15's L-BFGS-B (the logistic head's solver) makes many tiny BLAS calls and runs 5-8x slower
    when OpenBLAS may use several threads (scipy issue 22438; botorch limits it the same way). Measured on
    2 cores: logistic 4.0 -> 0.5 s on 785 x 1280 rows, 13.0 -> 4.2 s on 4,279; the MLP and LightGBM heads
    (torch and OpenMP threads) are unaffected.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y)), y], 1e-15, 1.0)
    return float(-np.log(p).mean())


def _rarest_label(Y: np.ndarray) -> np.ndarray:
    """Per row, the index of its rarest positive label (``-1`` for none): a stratification key that
    spreads every label over the folds of a multilabel K-fold split."""
    freq = Y.sum(0).astype(float)
    rank = np.where(Y.astype(bool), freq[None, :], np.inf)
    return np.where(Y.any(1), rank.argmin(1), -1)


def kfold(strat: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified K-fold indices (sklearn ``StratifiedKFold``; multilabel: by rarest label)."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    strat = _rarest_label(strat) if strat.ndim == 2 else strat
    if len(strat) < k:
        raise HeadError(f"{k}-fold cross-validation needs at least {k} rows, got {len(strat)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only m members"
        try:
            return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(strat)), strat))
        except ValueError as e:
            raise HeadError(f"cannot make {k} folds: {e}") from None


def _check_X(X: Any, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise HeadError(f"{name} features must be a 2-D array (rows x features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise HeadError(f"{name} features contain nan or inf values")
    return X


@dataclass
class _Best:
    """One scored configuration: its ranking key, parameters (as tried / as recorded), fold models and
    held-out probabilities."""

    key: tuple[float, float]
    params: dict[str, Any]
    record: dict[str, Any]
    models: list[Any]
    held: np.ndarray


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

    def _record_params(self, params: dict, model: Any) -> dict[str, Any]:
        """Parameters as recorded in the search (early-stopped heads add their iteration count)."""
        return dict(params)

    def _choose(self, search: list[dict[str, Any]]) -> int:
        """Index of the chosen entry of ``search``: the best score, ties broken by log-loss, then grid order."""
        return max(range(len(search)), key=lambda i: (search[i]["val_score"], -search[i]["val_log_loss"], -i))

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
        for name in ("cv", "oof_folds"):
            v = getattr(self, name, None)
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 2) and not (name == "cv" and v == 0):
                raise HeadError(f"{name} must be an integer >= 2{' (or 0: never CV)' if name == 'cv' else ''}, "
                                f"got {v!r}")
        get_metric(self.metric, self.task)

    def fit(self, X, y, X_val=None, y_val=None, n_classes: int | None = None) -> BaseHead:
        """Search on (X, y) scored on (X_val, y_val) (or K-fold CV on both with ``cv``).

        ``y`` holds class indices or a multi-hot matrix. Every choice is made by ``metric``.
        """
        t0 = time.perf_counter()
        self._check_params()
        with one_blas_thread():
            self._fit_checked(X, y, X_val, y_val, n_classes)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _fit_checked(self, X, y, X_val, y_val, n_classes: int | None) -> None:
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
        self.metric_ = get_metric(self.metric, self.task).name
        if self.task == "multilabel":
            y, y_val = y.astype(np.uint8), y_val.astype(np.uint8)
            if y.ndim != 2 or y_val.ndim != 2 or y.shape[1] != y_val.shape[1]:
                raise HeadError("multilabel targets must be multi-hot matrices with the same number of columns")
        else:
            y, y_val = y.astype(np.int64).ravel(), y_val.astype(np.int64).ravel()
        # the out-of-fold pass (and an automatic CV) use up to oof_folds folds: as many as train+val allows
        self.oof_folds_ = min(self.oof_folds, most_folds(y, y_val))
        folds = self.cv or self.oof_folds_
        groups = y.shape[1] if y.ndim == 2 else 1
        if self.cv:
            use_cv, auto = np.ones(groups, bool), None
        elif self.cv is None and self.oof_folds_ >= 2:
            use_cv, auto = small_validation(y, y_val, folds)
        else:
            use_cv, auto = np.zeros(groups, bool), None
        self.refit_ = "train+val" if use_cv.any() else self.refit
        refit_note = None
        if self.refit_ == "train+val" and not use_cv.any() and self.oof_folds_ < 2:
            self.refit_ = "train"  # no out-of-fold pass possible: thresholds stay tuned on val
            refit_note = ("train+val holds no class (or rarest-label group) with 2 rows, too few for out-of-fold "
                          "probabilities: the final model is the one fitted on train")
        if use_cv.all():
            by = f"{folds}-fold CV on train+val"
        elif use_cv.any():
            by = f"validation split; {folds}-fold CV on train+val for {int(use_cv.sum())} label(s)"
        else:
            by = "validation split"
        self.selection_ = {
            "by": by, "metric": self.metric_, "folds": folds if use_cv.any() else None, "seed": self.seed,
            "optimistic": True,  # the best of several configurations on the same rows
            "auto_cv": None if auto is None else (
                f"{auto}: too few to select on; chosen by {folds}-fold CV on train+val instead"
                + (f" ({int(use_cv.sum())} of {len(use_cv)} labels), and every label" if not use_cv.all() else
                   ", and") + " refitted on train+val"),
        }
        if refit_note:
            self.selection_["refit_note"] = refit_note
        if self.task == "multilabel":
            if use_cv.any() and not use_cv.all():
                self.selection_["cv_labels"] = np.flatnonzero(use_cv).tolist()
            self.classes_ = np.arange(y.shape[1])
            self._fit_multilabel(X, y, X_val, y_val, use_cv, folds)
        else:
            C = int(n_classes if n_classes is not None else max(y.max(), y_val.max()) + 1)
            if self.task == "binary" and C != 2:
                raise HeadError(f"a binary task needs exactly 2 classes, got {C}")
            self.classes_ = np.arange(C)
            self._fit_single(X, y, X_val, y_val, C, folds if use_cv[0] else None)
        if self.oof_proba_ is not None:
            self.selection_["thresholds_from"] = (f"out-of-fold probabilities of the chosen configuration "
                                                  f"over train+val ({self.oof_folds_}-fold, seed {self.seed})")
        else:
            self.selection_["thresholds_from"] = "validation probabilities of the model fitted on train"
        del self._score_fn, self._last_search  # scratch state of the search, not part of the model

    # -- building blocks ----------------------------------------------------------------------------
    def _pre(self) -> Preprocessor:
        return Preprocessor(self.preprocess, getattr(self, "pca", None), self.seed)

    def _fold_data(self, X: np.ndarray, strat: np.ndarray, k: int) -> list[tuple]:
        """``(X_fit, X_held, fit_idx, held_idx)`` per fold, each preprocessed on its own fit rows."""
        out = []
        for a, b in kfold(strat, k, self.seed):
            pre = self._pre().fit(X[a])
            out.append((pre.transform(X[a]), pre.transform(X[b]), a, b))
        return out

    def _proba_full(self, model: Any, X: np.ndarray, K: int) -> np.ndarray:
        p = self._proba_one(model, X)
        if p.shape[1] != K:  # a fold whose fit rows lack a class
            out = np.zeros((len(X), K))
            out[:, np.asarray(model.classes_, dtype=int)] = p
            return out
        return p

    def _sw(self, y: np.ndarray) -> np.ndarray | None:
        return balanced_weights(y) if self.class_weight == "balanced" else None

    def _parallel_fits(self, X: np.ndarray) -> int:
        """How many independent fits on rows like ``X`` may run at once in threads (1: one at a time).

        Heads whose fits are single-threaded native code that releases the GIL (LightGBM on small
        matrices) run a search round's configurations, or the out-of-fold pass's folds, side by side.
        """
        return 1

    def _held_out(self, params: dict, folds: list[tuple], n: int, K: int, early: bool,
                  warms: list | None = None, workers: int = 1) -> tuple[np.ndarray, list[Any]]:
        """Probabilities of every held-out row of ``folds`` ``(Xa, ya, Xb, yb, held_idx)``; folds are
        fitted ``workers`` at a time (warm starts need them in order)."""

        def one(f: int) -> Any:
            Xa, ya, Xb, yb, _ = folds[f]
            if len(np.unique(ya)) < 2:  # a fold with one class: predict its prior
                return None
            return self._fit_one(params, Xa, ya, self._sw(ya), K, Xb if early else None, yb if early else None,
                                 warms[f] if warms else None)

        if workers > 1 and warms is None and len(folds) > 1:
            with ThreadPoolExecutor(min(workers, len(folds))) as ex:
                models = list(ex.map(one, range(len(folds))))
        else:
            models = []
            for f in range(len(folds)):
                models.append(one(f))
                if warms is not None and models[-1] is not None:
                    warms[f] = models[-1]
        held = np.zeros((n, K))
        for m, (_, ya, Xb, _, idx) in zip(models, folds, strict=True):
            held[idx] = np.bincount(ya, minlength=K) / len(ya) if m is None else self._proba_full(m, Xb, K)
        return held, models

    def _merged(self, fn, params: dict, models: list[Any]) -> dict[str, Any]:
        """``fn(params, model)`` over fold models; integers that differ (iterations) -> their median."""
        dicts = [fn(params, m) for m in models if m is not None] or [dict(params)]
        out = dict(dicts[0])
        for k, v in out.items():
            vals = [d[k] for d in dicts]
            if isinstance(v, (int, np.integer)) and len(set(vals)) > 1:
                out[k] = int(round(float(np.median(vals))))
        return out

    def _search(self, folds: list[tuple], y_held: np.ndarray, K: int, mtask: str, metric: str) -> _Best:
        """Score every configuration on the held-out rows of ``folds`` by ``metric``; returns the best."""
        self._score_fn = functools.partial(selection_score, metric, mtask)  # also early-stops
        self._by_cv = len(folds) > 1  # held-out rows are all of train+val: their log-loss can break ties
        search: list[dict[str, Any]] = []
        results: list[_Best] = []
        todo = self._grid()
        warms: list[Any] = [None] * len(folds)
        round_ = 0
        tried: list[dict] = []
        workers = self._parallel_fits(folds[0][0])
        while todo:
            if workers > 1 and len(todo) > 1:  # independent configurations side by side, in order
                with ThreadPoolExecutor(min(workers, len(todo))) as ex:
                    outs = list(ex.map(lambda p: self._held_out(p, folds, len(y_held), K, True), todo))
            else:
                outs = [self._held_out(p, folds, len(y_held), K, True, warms) for p in todo]
            for params, (held, models) in zip(todo, outs, strict=True):
                primary = self._score_fn(y_held, held)
                nll = _log_loss(y_held, held)
                primary = -nll if primary != primary else primary  # undefined metric: rank by log-loss
                rec = self._merged(self._record_params, params, models)
                search.append({"params": rec, "val_score": primary, "val_log_loss": nll})
                results.append(_Best((primary, -nll), params, rec, models, held))
                tried.append(params)
            round_ += 1
            todo = [p for p in self._refine(search, round_) if p not in tried]
        self._last_search = search
        return results[self._choose(search)]

    def _fit_single(self, X, y, X_val, y_val, C: int, folds: int | None) -> None:
        """Select on the val split, or by ``folds``-fold CV over train+val when ``folds`` is given."""
        pool_y = np.concatenate([y, y_val])
        present = np.unique(pool_y if folds else y)
        if len(np.unique(y)) < 2:
            raise HeadError(f"the train split has only one class (index {int(np.unique(y)[0])}): need at least two")
        for k in sorted(set(range(C)) - set(present.tolist())):
            self.skipped_labels_.append({"label": int(k), "reason": "no training examples: never predicted"})
        remap = np.full(C, -1)
        remap[present] = np.arange(len(present))
        self.present_ = present
        K = len(present)
        Xp, yp = np.vstack([X, X_val]), remap[pool_y]
        n_tr = len(X)
        if folds:
            fd = self._fold_data(Xp, yp, folds)
            best = self._search([(a, yp[ia], b, yp[ib], ib) for a, b, ia, ib in fd], yp, K, self.task, self.metric_)
            self.oof_folds_ = folds
            oof = best.held
            refit_params = self._merged(self._refit_params, best.params, best.models)
            self.val_proba_ = self._expand(oof[n_tr:], C)
        else:
            yvr = yp[n_tr:]
            val_known = yvr >= 0  # val rows of a class unseen in train cannot be scored by the search
            if not val_known.any():
                raise HeadError("no validation row belongs to a class present in train")
            pre = self._pre().fit(X)
            Xt, Xv = pre.transform(X), pre.transform(X_val)
            best = self._search([(Xt, yp[:n_tr], Xv[val_known], yvr[val_known], np.arange(val_known.sum()))],
                                yvr[val_known], K, self.task, self.metric_)
            model = best.models[0]
            self.val_proba_ = self._expand(self._proba_full(model, Xv, K), C)
            refit_params = self._refit_params(best.params, model)
            oof = None
            if self.refit_ == "train+val":
                keep = np.flatnonzero(yp >= 0)
                fd = self._fold_data(Xp[keep], yp[keep], self.oof_folds_)
                held, _ = self._held_out(refit_params, [(a, yp[keep][ia], b, yp[keep][ib], ib)
                                                        for a, b, ia, ib in fd], len(keep), K, False,
                                         workers=self._parallel_fits(fd[0][0]))
                oof = np.full((len(yp), K), np.nan)
                oof[keep] = held
        self.search_ = self._last_search
        self.params_ = self.search_[self._best_index(best)]["params"]
        self.best_val_score_ = best.key[0]
        self.oof_proba_ = None if oof is None else self._expand(oof, C)
        if self.refit_ == "train+val":
            keep = yp >= 0
            pre = self._pre().fit(Xp[keep])
            model = self._fit_one(refit_params, pre.transform(Xp[keep]), yp[keep], self._sw(yp[keep]), K,
                                  None, None)
        self.preprocessor_ = pre
        self.model_ = model

    def _best_index(self, best: _Best) -> int:
        return next(i for i, s in enumerate(self._last_search) if s["params"] == best.record)

    def _expand(self, proba: np.ndarray, C: int) -> np.ndarray:
        out = np.zeros((len(proba), C))
        out[:, self.present_] = proba
        out[np.isnan(proba).any(1)] = np.nan  # rows left out of an out-of-fold pass
        return out

    def _fit_multilabel(self, X, Y, X_val, Y_val, use_cv: np.ndarray, folds: int) -> None:
        """One search per label: on the val split, or by ``folds``-fold CV over train+val where ``use_cv``."""
        C = Y.shape[1]
        self.estimators_: list[Any] = []
        self.search_ = []
        self.params_ = {}
        self.best_val_score_ = {}
        n_tr = len(X)
        Xp, Yp = np.vstack([X, X_val]), np.vstack([Y, Y_val])
        val_proba = np.zeros((len(X_val), C))
        oof = np.zeros((len(Xp), C)) if self.refit_ == "train+val" else None
        label_metric = get_metric(self.metric_, "multilabel").per_label
        fd = self._fold_data(Xp, Yp, folds) if use_cv.any() else None
        if use_cv.any():
            self.oof_folds_ = folds
        if not use_cv.all():
            pre = self._pre().fit(X)
            Xt, Xv = pre.transform(X), pre.transform(X_val)
            if oof is not None:  # automatic CV shares the out-of-fold pass's folds
                fd_oof = fd if fd is not None else self._fold_data(Xp, Yp, self.oof_folds_)
        if self.refit_ == "train+val":
            pre = self._pre().fit(Xp)
            Xa = pre.transform(Xp)
        for k in range(C):
            ytr, yva, ya = Y[:, k].astype(np.int64), Y_val[:, k].astype(np.int64), Yp[:, k].astype(np.int64)
            pos_tr, neg_tr, pos_va = int(ytr.sum()), int((1 - ytr).sum()), int(yva.sum())
            reason = None
            if use_cv[k] and ya.sum() < folds:
                reason = f"{int(ya.sum())} positive(s) in train+val (need {folds} for {folds}-fold CV)"
            elif pos_tr < 2:
                reason = f"{pos_tr} positive(s) in train (need 2)"
            elif neg_tr < 2:
                reason = f"{neg_tr} negative(s) in train (need 2)"
            elif pos_va == 0 and not use_cv[k]:
                reason = "no positive in validation: cannot tune"
            if reason:
                prior = float(ya.mean()) if self.refit_ == "train+val" else float(ytr.mean())
                self.skipped_labels_.append({"label": k, "reason": reason + "; predicted with constant prior",
                                             "prior": prior})
                self.estimators_.append(ConstantProba(prior))
                val_proba[:, k] = float(ytr.mean())
                if oof is not None:
                    oof[:, k] = prior
                self.params_[k] = None
                continue
            if use_cv[k]:
                best = self._search([(a, ya[ia], b, ya[ib], ib) for a, b, ia, ib in fd], ya, 2, "binary",
                                    label_metric)
                refit_params = self._merged(self._refit_params, best.params, best.models)
                oof[:, k] = best.held[:, 1]
                val_proba[:, k] = best.held[n_tr:, 1]
                model = None
            else:
                best = self._search([(Xt, ytr, Xv, yva, np.arange(len(yva)))], yva, 2, "binary", label_metric)
                model = best.models[0]
                refit_params = self._refit_params(best.params, model)
                val_proba[:, k] = self._proba_one(model, Xv)[:, 1]
                if oof is not None:
                    held, _ = self._held_out(refit_params, [(a, ya[ia], b, ya[ib], ib) for a, b, ia, ib in fd_oof],
                                             len(ya), 2, False, workers=self._parallel_fits(Xt))
                    oof[:, k] = held[:, 1]
            self.search_.extend({"label": k, **s} for s in self._last_search)
            self.params_[k] = best.record
            self.best_val_score_[k] = best.key[0]
            if self.refit_ == "train+val":
                model = self._fit_one(refit_params, Xa, ya, self._sw(ya), 2, None, None)
            self.estimators_.append(model)
        self.val_proba_ = val_proba
        self.oof_proba_ = oof
        self.preprocessor_ = pre

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

    def cross_val_proba(self, X, y, params: Any, folds: int = 5, n_classes: int | None = None) -> np.ndarray:
        """Out-of-fold probabilities of one configuration over ``(X, y)``: every row is scored by the
        configuration fitted (with its own preprocessing) on the other ``folds`` - 1 folds, seeded.

        ``params`` is a configuration as recorded in ``params_`` (iteration counts included, so nothing
        is early-stopped on the held-out rows); multilabel: one per label (a list, or a dict keyed by the
        label index as an int or str), ``None`` for a label to leave out, whose column is then NaN, as is
        a label with fewer than ``folds`` positives or negatives. Used to find label errors.
        """
        self._check_params()
        X = _check_X(X, "input")
        y = np.asarray(y)
        if len(y) != len(X):
            raise HeadError("features and labels have different numbers of rows")
        with one_blas_thread():
            if self.task == "multilabel":
                Y = y.astype(np.int64)
                out = np.full(Y.shape, np.nan)
                for k in range(Y.shape[1]):
                    p = params.get(k, params.get(str(k))) if isinstance(params, dict) else params[k]
                    yk = Y[:, k]
                    if p is None or min(int(yk.sum()), int(len(yk) - yk.sum())) < folds:
                        continue
                    out[:, k] = self._oof(dict(p), X, yk, 2, folds)[:, 1]
                return out
            y = y.astype(np.int64).ravel()
            C = int(n_classes if n_classes is not None else y.max() + 1)
            present = np.unique(y)
            remap = np.full(C, -1)
            remap[present] = np.arange(len(present))
            out = np.zeros((len(y), C))
            out[:, present] = self._oof(dict(params), X, remap[y], len(present), folds)
            return out

    def _oof(self, params: dict, X: np.ndarray, y: np.ndarray, K: int, folds: int) -> np.ndarray:
        fd = self._fold_data(X, y, folds)
        held, _ = self._held_out(params, [(a, y[ia], b, y[ib], ib) for a, b, ia, ib in fd], len(y), K, False,
                                 workers=self._parallel_fits(fd[0][0]))
        return held
