"""Out-of-core heads: the same three head kinds trained from features that stay on disk.

Chosen by the fit stage when a cache's features would not fit in the memory budget. Training rows
come as a :class:`featpipe.features.cache.H5Rows` read slab by slab (any 2-D array works too); validation is
small and stays in memory for the search, early stopping and threshold tuning, as in the in-memory
heads. Preprocessing is fitted in one streaming pass (``StandardScaler.partial_fit``; LightGBM adds
``IncrementalPCA``), so peak memory is one slab plus the model, whatever the cache size.

* ``logistic``: ``SGDClassifier(loss="log_loss")`` with ``partial_fit`` over slabs, ``alpha`` searched on
  validation (the streaming counterpart of the C search).
* ``lgbm``: LightGBM trained from a ``lightgbm.Sequence`` that reads, scales and projects slabs.
* ``mlp``: the MLP head's network trained from shuffled slabs, early-stopped on the validation metric.

Selection uses the metric table (:func:`featpipe.heads.metrics.selection_score`) like the in-memory heads;
LightGBM early-stops on its log-loss here. ``--refit train+val`` and ``--cv`` are refused: both need
several passes over train+val held in memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from featpipe.data.manifest import TASKS
from featpipe.errors import HeadError
from featpipe.heads._base import PREPROCESS, REFIT, ConstantProba, _log_loss, balanced_weights
from featpipe.heads._lgbm import DEFAULT_GRID as LGBM_GRID
from featpipe.heads._mlp import EarlyStopping, mlp_network, mlp_optimizer, mlp_weights, validation_pass
from featpipe.heads.metrics import DEFAULT_METRIC, get_metric, selection_score

ALPHA_GRID = tuple(float(a) for a in np.logspace(-6, -1, 6))


class _ArrayRows:
    """An in-memory matrix behind the same block interface as :class:`featpipe.features.cache.H5Rows`."""

    def __init__(self, X: np.ndarray, block: int = 4096) -> None:
        self.X = np.asarray(X, dtype=np.float64)
        self.block = block
        self.shape = self.X.shape

    def __len__(self) -> int:
        return len(self.X)

    def iter_blocks(self, rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        starts = np.arange(0, len(self.X), self.block)
        if rng is not None:
            starts = rng.permutation(starts)
        for lo in starts:
            pos = np.arange(lo, min(lo + self.block, len(self.X)))
            if rng is not None:
                pos = rng.permutation(pos)
            yield pos, self.X[pos]

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.X[start:stop]


def as_rows(X: Any) -> Any:
    """``X`` with ``iter_blocks``/``read``: on-disk rows as they are, arrays wrapped."""
    return X if hasattr(X, "iter_blocks") else _ArrayRows(X)


class _Scaler:
    """Streaming ``standardize`` / ``l2`` / ``none`` preprocessing (sklearn's partial_fit scaler)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def fit(self, rows: Any) -> _Scaler:
        from sklearn.preprocessing import StandardScaler

        self.scaler_ = None
        if self.kind == "standardize":
            self.scaler_ = StandardScaler()
            for _, block in rows.iter_blocks():
                self.scaler_.partial_fit(block)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.kind == "standardize":
            return self.scaler_.transform(X)
        if self.kind == "l2":
            n = np.linalg.norm(X, axis=1, keepdims=True)
            return X / np.where(n > 1e-12, n, 1.0)
        return X


class StreamingHead(ClassifierMixin, BaseEstimator):
    """One out-of-core head (``kind``: logistic, lgbm or mlp) with the in-memory heads' fitted attributes:
    ``classes_``, ``params_``, ``search_``, ``val_proba_``, ``skipped_labels_``, ``n_features_in_``."""

    def __init__(self, kind: str = "logistic", task: str = "multiclass", preprocess: str = "standardize",
                 class_weight: str | None = None, refit: str = "train", metric: str | None = None, seed: int = 0,
                 alpha_grid: Sequence[float] = ALPHA_GRID, epochs: int = 5,
                 lgbm_grid: Sequence[dict[str, Any]] = LGBM_GRID, n_estimators: int = 1000,
                 early_stopping_rounds: int = 30, pca: int | None = 128, max_bin: int = 63,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.2, weight_decay: float = 1e-4,
                 lr: float = 1e-3, batch_size: int = 128, max_epochs: int = 50, patience: int = 5,
                 cv: int | None = None):
        self.kind = kind
        self.task = task
        self.preprocess = preprocess
        self.class_weight = class_weight
        self.refit = refit
        self.metric = metric
        self.seed = seed
        self.alpha_grid = alpha_grid
        self.epochs = epochs
        self.lgbm_grid = lgbm_grid
        self.n_estimators = n_estimators
        self.early_stopping_rounds = early_stopping_rounds
        self.pca = pca
        self.max_bin = max_bin
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.cv = cv

    @property
    def name(self) -> str:
        return self.kind

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, X: Any, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
            n_classes: int | None = None) -> StreamingHead:
        if self.kind not in ("logistic", "lgbm", "mlp"):
            raise HeadError(f"unknown streaming head {self.kind!r}; expected logistic, lgbm or mlp")
        if self.task not in TASKS or self.preprocess not in PREPROCESS or self.refit not in REFIT:
            raise HeadError(f"invalid head settings: task={self.task!r}, preprocess={self.preprocess!r}, "
                            f"refit={self.refit!r}")
        if self.refit != "train" or self.cv:
            raise HeadError("out-of-core heads refit on train only and select on the validation split; drop "
                            "--refit train+val / --cv (validation is small next to a cache larger than memory)")
        self.metric_ = self.metric or DEFAULT_METRIC[self.task]
        self.refit_ = "train"
        self.oof_proba_ = None
        self.selection_ = {"by": "validation split", "metric": self.metric_, "folds": None, "seed": self.seed,
                           "optimistic": True,
                           "thresholds_from": "validation probabilities of the model fitted on train"}
        rows = as_rows(X)
        if X_val is None or len(X_val) == 0:
            raise HeadError("the validation split is empty: heads are tuned on validation, add a val split")
        y, y_val = np.asarray(y), np.asarray(y_val)
        if len(y) != len(rows) or len(y_val) != len(X_val):
            raise HeadError("features and labels have different numbers of rows")
        self.n_features_in_ = int(rows.shape[1])
        self.skipped_labels_: list[dict[str, Any]] = []
        self.search_: list[dict[str, Any]] = []
        self._lgb_train_ = None  # binned train rows, shared by the grid and every label
        self.scaler_ = _Scaler(self.preprocess).fit(rows)
        Xv = self.scaler_.transform(X_val)
        self.ipca_ = None
        if self.kind == "lgbm" and self.pca and rows.shape[1] > self.pca:
            self.ipca_ = self._fit_ipca(rows)
            Xv = self.ipca_.transform(Xv)
        if self.task == "multilabel":
            Y, Yv = y.astype(np.int64), y_val.astype(np.int64)
            C = Y.shape[1]
            self.classes_ = np.arange(C)
            self.estimators_: list[Any] = []
            self.params_: dict[Any, Any] = {}
            self.val_proba_ = np.zeros((len(Yv), C))
            for k in range(C):
                reason = _too_few(Y[:, k], Yv[:, k])
                if reason:
                    prior = float(Y[:, k].mean())
                    self.skipped_labels_.append({"label": k, "reason": reason + "; predicted with constant prior",
                                                 "prior": prior})
                    self.estimators_.append(ConstantProba(prior))
                    self.params_[k] = None
                    self.val_proba_[:, k] = prior
                    continue
                label_metric = get_metric(self.metric_, "multilabel").per_label
                model, params, search = self._search(rows, Y[:, k], Xv, Yv[:, k], 2, label_metric, "binary")
                self.search_ += [{"label": k, **s} for s in search]
                self.params_[k] = params
                self.estimators_.append(model)
                self.val_proba_[:, k] = self._proba_model(model, Xv, 2)[:, 1]
        else:
            y, y_val = y.astype(np.int64).ravel(), y_val.astype(np.int64).ravel()
            C = int(n_classes if n_classes is not None else max(y.max(), y_val.max()) + 1)
            self.classes_ = np.arange(C)
            present = np.unique(y)
            if len(present) < 2:
                raise HeadError(f"the train split has only one class (index {int(present[0])}): need at least two")
            if len(present) < C:
                raise HeadError("out-of-core heads need every class in the train split")
            self.model_, self.params_, self.search_ = self._search(rows, y, Xv, y_val, C, self.metric_, self.task)
            self.val_proba_ = self._proba_model(self.model_, Xv, C)
        self.__dict__.pop("_select", None)  # scratch state of the search
        self._lgb_train_ = None
        return self

    def _fit_ipca(self, rows: Any) -> Any:
        from sklearn.decomposition import IncrementalPCA

        ipca = IncrementalPCA(n_components=self.pca)
        carry = None  # IncrementalPCA needs at least n_components rows per partial_fit
        for _, block in rows.iter_blocks():
            block = self.scaler_.transform(block)
            carry = block if carry is None else np.vstack([carry, block])
            if len(carry) >= self.pca:
                ipca.partial_fit(carry)
                carry = None
        if carry is not None and len(carry) >= self.pca:
            ipca.partial_fit(carry)
        if not hasattr(ipca, "components_"):
            raise HeadError(f"too few train rows ({len(rows)}) for a {self.pca}-component PCA")
        return ipca

    def _transform(self, block: np.ndarray) -> np.ndarray:
        Xt = self.scaler_.transform(block)
        return self.ipca_.transform(Xt) if self.ipca_ is not None else Xt

    def _search(self, rows: Any, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, C: int, metric: str, task: str):
        sw = balanced_weights(y) if self.class_weight == "balanced" else None
        fit = {"logistic": self._fit_sgd, "lgbm": self._fit_lgbm, "mlp": self._fit_mlp}[self.kind]
        self._select = (metric, task)  # the MLP early-stops on it too
        results = []
        for params in self._grid():
            model, recorded = fit(params, rows, y, sw, Xv, yv, C)
            proba = self._proba_model(model, Xv, C)
            primary = selection_score(metric, task, yv, proba)
            nll = _log_loss(yv, proba)
            primary = -nll if primary != primary else primary  # undefined metric: rank by log-loss
            results.append(((primary, -nll), model, recorded))
        best = max(range(len(results)), key=lambda i: (results[i][0], -i))
        search = [{"params": r[2], "val_score": r[0][0], "val_log_loss": -r[0][1]} for r in results]
        return results[best][1], results[best][2], search

    def _grid(self) -> list[dict[str, Any]]:
        if self.kind == "logistic":
            return [{"alpha": float(a)} for a in self.alpha_grid]
        if self.kind == "lgbm":
            return [dict(g) for g in self.lgbm_grid]
        return [{"weight_decay": float(self.weight_decay)}]

    # -- logistic: SGD over slabs --------------------------------------------------------------------
    def _fit_sgd(self, params, rows, y, sw, Xv, yv, C):
        from sklearn.linear_model import SGDClassifier

        rng = np.random.default_rng(self.seed)
        model = SGDClassifier(loss="log_loss", alpha=params["alpha"], random_state=self.seed)
        classes = np.arange(C)
        for _ in range(self.epochs):
            for pos, block in rows.iter_blocks(rng):
                model.partial_fit(self._transform(block), y[pos], classes=classes,
                                  sample_weight=None if sw is None else sw[pos])
        return model, {**params, "epochs": self.epochs}

    # -- lgbm: Sequence over slabs -------------------------------------------------------------------
    def _fit_lgbm(self, params, rows, y, sw, Xv, yv, C):
        # lgb.train, not the sklearn wrapper: only lgb.Dataset takes a lightgbm.Sequence (chunked reads)
        if self._lgb_train_ is None:
            self._lgb_train_ = lgb.Dataset(_LGBMSequence(rows, self._transform), free_raw_data=False,
                                           params={"max_bin": self.max_bin, "verbose": -1,
                                                   "feature_pre_filter": False})
        train = self._lgb_train_
        train.set_label(y)
        train.set_weight(sw)
        valid = lgb.Dataset(Xv, label=yv, reference=train)
        p = dict(params)
        lgb_params = {
            "objective": "binary" if C == 2 else "multiclass", "num_class": 1 if C == 2 else C,
            "num_leaves": p.get("num_leaves", 31), "learning_rate": p.get("learning_rate", 0.1),
            "min_child_samples": p.get("min_child_samples", 20), "feature_fraction": p.get("feature_fraction", 1.0),
            "max_bin": self.max_bin, "seed": self.seed, "deterministic": True, "force_col_wise": True,
            "verbose": -1,
        }
        with warnings.catch_warnings():  # the grid's tree settings differ from the shared binned set's: expected
            warnings.filterwarnings("ignore", message="Overriding the parameters from Reference Dataset")
            booster = lgb.train(lgb_params, train, num_boost_round=self.n_estimators, valid_sets=[valid],
                                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
        return booster, {**params, "n_estimators": int(booster.best_iteration or booster.current_iteration())}

    # -- mlp: mini-batches from slabs ----------------------------------------------------------------
    def _fit_mlp(self, params, rows, y, sw, Xv, yv, C):
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        net = mlp_network(rows.shape[1], self.hidden, self.dropout, C)
        opt = mlp_optimizer(net, self.lr, params["weight_decay"])
        loss_fn = nn.CrossEntropyLoss(reduction="none")
        xv, tv = torch.as_tensor(Xv, dtype=torch.float32), torch.as_tensor(yv, dtype=torch.long)
        stopper = EarlyStopping(self.patience)
        for epoch in range(1, self.max_epochs + 1):
            net.train()
            for pos, block in rows.iter_blocks(rng):
                xb = torch.as_tensor(self._transform(block), dtype=torch.float32)
                yb = torch.as_tensor(y[pos], dtype=torch.long)
                wb = torch.as_tensor(sw[pos] if sw is not None else np.ones(len(pos)), dtype=torch.float32)
                for i in range(0, len(pos), self.batch_size):
                    opt.zero_grad()
                    sl = slice(i, i + self.batch_size)
                    loss = (loss_fn(net(xb[sl]), yb[sl]) * wb[sl]).sum() / wb[sl].sum()
                    loss.backward()
                    opt.step()
            proba, vloss = validation_pass(net, xv, tv, loss_fn)
            if stopper.update(epoch, net, selection_score(*self._select, yv, proba), vloss):
                break
        stopper.restore(net)
        return mlp_weights(net, stopper.best_epoch), {**params, "epochs": stopper.best_epoch}

    # ------------------------------------------------------------------------------------- predict
    def _proba_model(self, model: Any, Xt: np.ndarray, C: int) -> np.ndarray:
        if self.kind == "lgbm":
            p = model.predict(Xt, num_iteration=model.best_iteration or None)
            return np.column_stack([1 - p, p]) if C == 2 else p
        if self.kind == "mlp":
            return model.forward(Xt)
        return model.predict_proba(Xt)

    def _proba_block(self, block: np.ndarray) -> np.ndarray:
        Xt = self._transform(block)
        if self.task == "multilabel":
            out = np.zeros((len(block), len(self.classes_)))
            for k, est in enumerate(self.estimators_):
                out[:, k] = est.p if isinstance(est, ConstantProba) else self._proba_model(est, Xt, 2)[:, 1]
            return out
        return self._proba_model(self.model_, Xt, len(self.classes_))

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, C)`` probabilities for an array or on-disk rows (read slab by slab)."""
        rows = as_rows(X)
        if rows.shape[1] != self.n_features_in_:
            raise HeadError(f"expected {self.n_features_in_} features per row, got {rows.shape[1]}")
        out = np.zeros((len(rows), len(self.classes_)))
        for pos, block in rows.iter_blocks():
            out[pos] = self._proba_block(block)
        return out

    def predict(self, X: Any) -> np.ndarray:
        p = self.predict_proba(X)
        return (p >= 0.5).astype(np.uint8) if self.task == "multilabel" else p.argmax(1)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lgb_train_", None)  # the binned training set is not part of the model
        return state


def _too_few(ytr: np.ndarray, yva: np.ndarray) -> str | None:
    pos, neg = int(ytr.sum()), int((1 - ytr).sum())
    if pos < 2:
        return f"{pos} positive(s) in train (need 2)"
    if neg < 2:
        return f"{neg} negative(s) in train (need 2)"
    if int(yva.sum()) == 0:
        return "no positive in validation: cannot tune"
    return None


class _LGBMSequence(lgb.Sequence):
    """On-disk rows as a ``lightgbm.Sequence``: LightGBM bins the data batch by batch."""

    batch_size = 4096

    def __init__(self, rows: Any, transform: Any) -> None:
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int | slice) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, _ = idx.indices(len(self.rows))
            return self.transform(self.rows.read(start, stop))
        return self.transform(self.rows.read(idx, idx + 1))[0]
