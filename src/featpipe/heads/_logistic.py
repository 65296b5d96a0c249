"""Logistic-regression head: C tuned on validation, coarse log grid then refined around the best."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from featpipe.heads._base import DEFAULT_REFIT, BaseHead

COARSE_C = tuple(float(c) for c in np.logspace(-6, 2, 9))


class LogisticHead(BaseHead):
    """L2 logistic regression (lbfgs; multinomial for multiclass, one per label for multilabel).

    ``C`` is picked on validation from ``C_grid`` (default ``1e-6 .. 1e2``, one per decade), then
    ``refine_steps`` rounds try ``best * 10**(+-0.5)``, ``best * 10**(+-0.25)``, ... (as in LAION
    clip_benchmark's linear probe). Fits along the grid are warm-started for speed.
    """

    name = "logistic"

    def __init__(self, task: str = "multiclass", C_grid: Sequence[float] = COARSE_C, refine_steps: int = 2,
                 max_iter: int = 500, preprocess: str = "standardize", class_weight: str | None = None,
                 refit: str = DEFAULT_REFIT, metric: str | None = None, cv: int | None = None,
                 oof_folds: int = 5, seed: int = 0):
        self.task = task
        self.C_grid = C_grid
        self.refine_steps = refine_steps
        self.max_iter = max_iter
        self.preprocess = preprocess
        self.class_weight = class_weight
        self.refit = refit
        self.metric = metric
        self.cv = cv
        self.oof_folds = oof_folds
        self.seed = seed

    def _grid(self) -> list[dict[str, Any]]:
        return [{"C": float(c)} for c in sorted(self.C_grid)]

    def _refine(self, search: list[dict], round_: int) -> list[dict[str, Any]]:
        if round_ > self.refine_steps:
            return []
        best = search[self._choose(search)]["params"]["C"]
        step = 0.5 ** round_
        return [{"C": float(best * 10 ** -step)}, {"C": float(best * 10 ** step)}]

    def _choose(self, search: list[dict[str, Any]]) -> int:
        """The best score; selecting on a val split, between Cs that tie on it, the centre (in log C) of the
        widest run of tied Cs.

        A few val rows that cannot tell Cs apart would otherwise hand the tie to their log-loss, which can
        favour the least confident model: the smallest C, which the refinement then pushes below the grid
        (a near-constant model). The centre of the tied run is the threshold rule's plateau-centre applied
        to C. Selecting by K-fold CV, the held-out rows are all of train+val and their log-loss (a proper
        score) breaks ties, as for every head; a single tied C, or runs of one, also go to the lowest log-loss.
        """
        if getattr(self, "_by_cv", False):
            return super()._choose(search)
        score = np.array([s["val_score"] for s in search])
        nll = np.array([s["val_log_loss"] for s in search])
        logc = np.log10([s["params"]["C"] for s in search])
        order = np.argsort(logc, kind="stable")
        tied = score[order] >= score.max() - 1e-12
        runs, start = [], None
        for j, t in enumerate([*tied, False]):
            if t and start is None:
                start = j
            elif not t and start is not None:
                runs.append(order[start:j])
                start = None
        run = max(runs, key=lambda r: (logc[r[-1]] - logc[r[0]], -nll[r].min()))
        centre = (logc[run[0]] + logc[run[-1]]) / 2
        return int(min(run, key=lambda i: (abs(logc[i] - centre), nll[i], i)))

    def _fit_one(self, params, X, y, sw, n_classes, X_val, y_val, warm=None):
        if isinstance(warm, LogisticRegression) and warm.coef_.shape[0] == (1 if n_classes == 2 else n_classes):
            model = copy.deepcopy(warm)
            model.set_params(C=params["C"], warm_start=True)
        else:
            model = LogisticRegression(C=params["C"], max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y, sample_weight=sw)
        model.set_params(warm_start=False)
        return model

    def _proba_one(self, model, X):
        return model.predict_proba(X)
