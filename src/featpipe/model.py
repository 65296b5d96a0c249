"""The model bundle: a fitted head + its thresholds + the backbone spec that made its features.

``FeaturepipeModel`` behaves like a scikit-learn classifier. ``predict``/``predict_proba`` take a
feature array ``(n, D)`` or images (a path, a list of paths, or a directory, searched recursively),
which are embedded with the recorded backbone. Saved with :meth:`FeaturepipeModel.save` as joblib plus
a ``.sha256`` sidecar; :func:`load_model` checks both and warns when library versions changed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.errors import HeadError, ModelError
from featpipe.heads import make_head
from featpipe.metrics import DEFAULT_METRIC, main_metric_key
from featpipe.thresholds import (
    BINARY_METRICS,
    MULTILABEL_METRICS,
    apply_thresholds,
    tune_binary_threshold,
    tune_multilabel_thresholds,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class FeaturepipeVersionWarning(UserWarning):
    """A model bundle was saved with other library versions than the ones installed now."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries a fitted head depends on."""
    import joblib
    import sklearn

    import featpipe

    out = {"featpipe": featpipe.__version__, "python": platform.python_version(), "numpy": np.__version__,
           "scikit-learn": sklearn.__version__, "joblib": joblib.__version__}
    for mod in ("lightgbm", "torch"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            pass
    return out


def expand_image_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A path, a list of paths, or directories (recursively, sorted) -> list of image file paths."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(str(p))
    return out


def _threshold_metric(metric: str, task: str) -> str:
    if task == "binary":
        return metric if metric in BINARY_METRICS else "f1"
    if metric in MULTILABEL_METRICS:
        return metric
    return {"f1": "micro_f1"}.get(metric, "micro_f1")


class FeaturepipeModel:
    """A classifier on backbone features: head + tuned thresholds + backbone spec, sklearn-style.

    Parameters are recorded as given; ``fit(X, y, X_val, y_val)`` fits the head (tuned on val),
    tunes thresholds on the head's held-out validation probabilities (multilabel: ``threshold_mode``
    "per-class" or "global" decides which ones ``predict`` uses; both are recorded), and sets ``classes_``,
    ``thresholds_``, ``params_``, ``threshold_`` (full record), ``skipped_labels_`` and ``versions``.
    """

    def __init__(self, head_name: str = "logistic", task: str = "multiclass", classes: Sequence[str] | None = None,
                 metric: str | None = None, class_weight: str | None = None, refit: str = "train",
                 preprocess: str = "standardize", seed: int = 0, backbone_spec: dict[str, Any] | None = None,
                 train_fingerprint: str | None = None, min_positives: int = 5, threshold_tol: float | None = None,
                 head_params: dict[str, Any] | None = None, threshold_mode: str = "per-class",
                 head: Any = None):
        self.head_name = head_name
        self.task = task
        self.classes = classes
        self.metric = metric
        self.class_weight = class_weight
        self.refit = refit
        self.preprocess = preprocess
        self.seed = seed
        self.backbone_spec = backbone_spec
        self.train_fingerprint = train_fingerprint
        self.min_positives = min_positives
        self.threshold_tol = threshold_tol
        self.head_params = head_params
        self.threshold_mode = threshold_mode
        self.head = head  # an estimator to fit instead of make_head(head_name) (e.g. a fine-tuned layer)
        self.embed_device = "auto"
        self.embed_batch_size: int | None = None

    # ---------------------------------------------------------------------------------------- fit
    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> FeaturepipeModel:
        t0 = time.perf_counter()
        metric = self.metric or DEFAULT_METRIC.get(self.task, "accuracy")
        main_metric_key(metric, self.task)  # validates
        n_cls = len(self.classes) if self.classes is not None else None
        if self.task == "multilabel":
            n_cls = np.asarray(y).shape[1] if np.asarray(y).ndim == 2 else n_cls
        classes = list(self.classes) if self.classes is not None else [str(i) for i in range(n_cls or 0)]
        if getattr(self, "head", None) is not None:
            from sklearn.base import clone

            head = clone(self.head)
        else:
            head = make_head(self.head_name, task=self.task, preprocess=self.preprocess,
                             class_weight=self.class_weight, refit=self.refit, metric=metric, seed=self.seed,
                             **(self.head_params or {}))
        try:
            head.fit(X, y, X_val, y_val, **({} if self.task == "multilabel" else {"n_classes": n_cls}))
        except HeadError as e:
            msg = str(e)
            for i, c in enumerate(classes):  # name classes instead of indices
                msg = msg.replace(f"(index {i})", f"({c!r})")
            raise HeadError(msg) from None
        self.head_ = head
        self.classes_ = np.array(classes, dtype=object)
        self.n_features_in_ = head.n_features_in_
        self.val_proba_ = head.val_proba_
        y_val = np.asarray(y_val)
        if self.task == "binary":
            r = tune_binary_threshold(y_val, head.val_proba_[:, 1], _threshold_metric(metric, "binary"),
                                      self.threshold_tol)
            self.thresholds_: float | np.ndarray | None = float(r.global_)
            self.threshold_ = r.to_dict()
        elif self.task == "multilabel":
            r = tune_multilabel_thresholds(y_val, head.val_proba_, _threshold_metric(metric, "multilabel"),
                                           self.min_positives, self.threshold_tol)
            if self.threshold_mode not in ("per-class", "global"):
                raise HeadError(f"unknown threshold mode {self.threshold_mode!r}; expected per-class or global")
            per = r.per_class if self.threshold_mode == "per-class" else [r.global_] * len(r.per_class)
            self.thresholds_ = np.asarray(per, dtype=float)
            self.threshold_ = {**r.to_dict(), "used": self.threshold_mode}
        else:
            self.thresholds_ = None
            self.threshold_ = None
        name = {i: str(c) for i, c in enumerate(classes)}
        if self.task == "multilabel":
            self.params_ = {name[k]: v for k, v in head.params_.items()}
            self.search_ = [{**s, "label": name[s["label"]]} for s in head.search_]
        else:
            self.params_ = dict(head.params_)
            self.search_ = list(head.search_)
        self.skipped_labels_ = [{**s, "label": name[s["label"]]} for s in head.skipped_labels_]
        self.versions = library_versions()
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    # ------------------------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise ModelError("this FeaturepipeModel is not fitted yet; call fit() or load a saved model")

    def _features(self, X: Any) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
        """(features, ok rows, paths or None); images are embedded with the recorded backbone."""
        if isinstance(X, np.ndarray) and X.dtype.kind in "fiu":
            X = np.asarray(X, dtype=np.float64)
            if X.ndim == 1:
                X = X[None, :]
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ModelError(f"expected features of shape (n, {self.n_features_in_}), got {X.shape}")
            self.last_errors_: list[tuple[str, str]] = []
            return X, np.ones(len(X), dtype=bool), None
        paths = expand_image_paths(X)
        if not paths:
            raise ModelError("no images to predict: the given paths hold no image files")
        if not self.backbone_spec:
            raise ModelError("this model has no recorded backbone, so it can only predict on feature arrays")
        from featpipe.embed import embed_paths

        feats, ok, errors = embed_paths(self.backbone_spec, paths, batch_size=self.embed_batch_size,
                                        device=self.embed_device)
        if feats.shape[1] != self.n_features_in_:
            raise ModelError(f"the backbone gave {feats.shape[1]} features, the head expects {self.n_features_in_}")
        self.last_errors_ = [(p, e or "unreadable") for p, o, e in zip(paths, ok, errors, strict=True) if not o]
        return feats.astype(np.float64), np.asarray(ok, dtype=bool), paths

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, C)`` probabilities (binary: ``[neg, pos]``); rows of unreadable images are nan."""
        self._check_fitted()
        feats, ok, _ = self._features(X)
        out = np.full((len(feats), len(self.classes_)), np.nan)
        if ok.any():
            out[ok] = self.head_.predict_proba(feats[ok])
        return out

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class indices (``-1`` for nan rows) or multi-hot ``uint8`` from probabilities, with the tuned thresholds."""
        self._check_fitted()
        return apply_thresholds(proba, self.task, self.thresholds_)

    def predict(self, X: Any) -> np.ndarray | list[list[str] | None]:
        """Class names (single-label, ``None`` for unreadable images) or lists of names (multilabel)."""
        proba = self.predict_proba(X)
        return self.labels_from_proba(proba)

    def labels_from_proba(self, proba: np.ndarray) -> np.ndarray | list[list[str] | None]:
        dec = self.decide(proba)
        bad = np.isnan(proba).any(axis=1)
        if self.task == "multilabel":
            return [None if b else [str(c) for c, on in zip(self.classes_, row, strict=True) if on]
                    for row, b in zip(dec, bad, strict=True)]
        return np.array([None if d < 0 else self.classes_[d] for d in dec], dtype=object)

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """The main metric on features ``X`` with labels ``y`` (indices or multi-hot)."""
        from featpipe.metrics import evaluate

        proba = self.predict_proba(X)
        return float(evaluate(y, proba, self.decide(proba), self.task, list(self.classes_), self.metric)["main"])

    # ------------------------------------------------------------------------------------- disk
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (joblib) and ``path.sha256`` (its hex digest)."""
        import joblib

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        joblib.dump(self, tmp)
        digest = _sha256(tmp)
        os.replace(tmp, path)
        Path(str(path) + ".sha256").write_text(digest + "\n")
        return path

    def __setstate__(self, state: dict[str, Any]) -> None:
        # plain joblib.load() lands here too, so a version change warns in any script
        self.__dict__.update(state)
        if "head_" in state:
            _warn_if_versions_differ(state.get("versions"), "this featpipe model")

    def __repr__(self) -> str:
        state = "fitted" if hasattr(self, "head_") else "unfitted"
        return f"FeaturepipeModel(head={self.head_name!r}, task={self.task!r}, classes={len(self.classes or [])}, {state})"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(path: str | os.PathLike, verify: bool = True) -> FeaturepipeModel:
    """Load a saved bundle; with ``verify`` the ``.sha256`` sidecar must exist and match."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if verify:
        side = Path(str(path) + ".sha256")
        if not side.is_file():
            raise ModelError(f"checksum file {side.name} is missing next to {path}; pass --no-verify to skip the check")
        want = (side.read_text().split() or [""])[0].lower()
        if want != _sha256(path):
            raise ModelError(f"checksum mismatch for {path}: the file changed since it was saved (or is corrupt)")
    try:
        model = joblib.load(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad model file for the user
        raise ModelError(f"cannot load model {path}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}") from None
    if not isinstance(model, FeaturepipeModel):
        raise ModelError(f"{path} does not hold a featpipe model (found {type(model).__name__})")
    return model


def _warn_if_versions_differ(versions: dict[str, str] | None, what: str) -> None:
    now = library_versions()
    diff = [f"{k} {v} -> {now[k]}" for k, v in (versions or {}).items()
            if k in now and k != "python" and now[k] != v]
    if diff:
        warnings.warn(f"{what} was saved with other library versions ({'; '.join(diff)}); "
                      "predictions may differ", FeaturepipeVersionWarning, stacklevel=3)
