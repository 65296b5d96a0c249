"""The fine-tuned model bundle: the trained classifier layer as a head over ``finetuned:`` features."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from featpipe.errors import HeadError


class FinetunedHead(ClassifierMixin, BaseEstimator):
    """The classifier layer of a fine-tune run (already trained end to end): ``coef`` ``(C, D)`` and
    ``intercept`` ``(C,)`` on the fine-tuned backbone's pooled features; softmax (single-label) or
    sigmoid (multilabel). ``fit`` learns nothing; it records the validation probabilities the bundle
    tunes its thresholds on, like every featpipe head."""

    name = "finetune"

    def __init__(self, coef: np.ndarray | None = None, intercept: np.ndarray | None = None,
                 task: str = "multiclass"):
        self.coef = coef
        self.intercept = intercept
        self.task = task

    def fit(self, X, y, X_val=None, y_val=None, n_classes: int | None = None) -> FinetunedHead:
        X = np.asarray(X, dtype=np.float64)
        if self.coef is None or self.intercept is None:
            raise HeadError("FinetunedHead needs the trained layer's coef and intercept")
        self.coef_ = np.asarray(self.coef, dtype=np.float64)
        self.intercept_ = np.asarray(self.intercept, dtype=np.float64)
        if X.shape[1] != self.coef_.shape[1]:
            raise HeadError(f"the classifier layer takes {self.coef_.shape[1]} features, got {X.shape[1]}")
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.arange(self.coef_.shape[0])
        self.val_proba_ = self.predict_proba(X_val) if X_val is not None else None
        self.params_: dict[str, Any] = {}
        self.search_: list[dict[str, Any]] = []
        self.skipped_labels_: list[dict[str, Any]] = []
        self.refit_ = "train"
        self.oof_proba_ = None  # thresholds are tuned on the validation probabilities
        self.selection_ = {"by": "validation split (early stopping of the fine-tune run)", "optimistic": True,
                           "thresholds_from": "validation probabilities of the fine-tuned model"}
        return self

    def decision_function(self, X) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        if self.task == "multilabel":
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        p = self.predict_proba(X)
        return (p >= 0.5).astype(np.uint8) if self.task == "multilabel" else p.argmax(1)
