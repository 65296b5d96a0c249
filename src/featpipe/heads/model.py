"""The model bundle: a fitted head + its thresholds + the backbone spec that made its features.

``FeaturepipeModel`` is a scikit-learn classifier (``clone``, ``Pipeline``, ``cross_val_score`` work on
feature arrays). ``predict``/``predict_proba`` take a feature array ``(n, D)`` or images (a path, a list
of paths, or a directory, searched recursively), which are embedded with the recorded backbone and the
recorded preprocessing. Saved with :meth:`FeaturepipeModel.save` as joblib plus a ``.sha256`` sidecar;
:func:`featpipe.bundle.io.load_model` checks both, finds the backbone weights on this machine by their hash, and warns
when library versions changed.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from featpipe.checksum import sha256_file, write_sidecar
from featpipe.data.images import IMAGE_EXTENSIONS
from featpipe.errors import HeadError, ModelError
from featpipe.heads import DEFAULT_REFIT, make_head
from featpipe.heads.metrics import DEFAULT_METRIC, main_metric_key
from featpipe.heads.thresholds import apply_thresholds, tune_thresholds
from featpipe.versions import (
    FeaturepipeVersionWarning,  # noqa: F401 - re-exported for users
    library_versions,
    warn_if_versions_differ,
)

BUNDLE_FORMAT = 2  # 1: featpipe 0.1 bundles (plain object, no recorded preprocessing); loaded as they are


class ModelNotFittedError(ModelError, NotFittedError):
    """An unfitted model was used: scikit-learn's NotFittedError that the CLI prints as one line."""


class ModelFitError(HeadError, ValueError):
    """Targets or features a model cannot be fitted on (a ValueError, as scikit-learn expects)."""


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


def _is_image_input(X: Any) -> bool:
    """A path, or a 1-D sequence of paths (anything else is a feature array)."""
    if isinstance(X, (str, os.PathLike)):
        return True
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.dtype.kind in "UO" and len(X) > 0 and all(isinstance(v, str) for v in X)
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(v, (str, os.PathLike)) for v in X)


def _infer_task(y: np.ndarray) -> str:
    kind = type_of_target(y)
    if kind == "multilabel-indicator":
        return "multilabel"
    if kind in ("binary", "multiclass"):
        return "binary" if len(np.unique(y)) == 2 else "multiclass"
    raise ModelFitError(f"cannot fit a classifier on targets of type {kind!r}")


def _named(msg: str, names: Sequence[Any]) -> str:
    """A head's message with class names for its ``(index i)`` references."""
    for i, c in enumerate(names):
        msg = msg.replace(f"(index {i})", f"{str(c)!r}")
    return msg


class FeaturepipeModel(ClassifierMixin, BaseEstimator):
    """A classifier on backbone features: head + tuned thresholds + backbone spec, scikit-learn style.

    ``fit(X, y)`` holds out a seeded, stratified ``validation_fraction`` of ``(X, y)`` to tune the head
    and the thresholds (like scikit-learn's early-stopping estimators); ``fit(X, y, X_val=..., y_val=...)``
    uses the given validation rows instead (what ``featpipe fit-head`` does with the dataset's val split).
    The chosen configuration is then refitted on train + validation (``refit="train+val"``, the default;
    thresholds from its out-of-fold probabilities) or kept as fitted on train (``refit="train"``).
    ``y`` holds class labels (``classes_`` = sorted unique labels), or class indices into ``classes``
    when names are given, or a multi-hot matrix for multilabel. ``task="auto"`` infers the task from ``y``.

    Learned state: ``classes_``, ``task_``, ``head_``, ``thresholds_`` (binary: float; multilabel: per
    label; ``threshold_mode`` picks per-class or global, both recorded in ``threshold_``), ``params_``,
    ``search_``, ``skipped_labels_``, ``val_proba_``, ``preprocessing_`` (how images are turned into the
    backbone's input), ``weights_`` (package / file name + hash of the backbone weights), ``versions_``.
    ``embed_device`` and ``embed_batch_size`` only affect how images are embedded at predict time.
    """

    def __init__(self, head_name: str = "logistic", task: str = "auto", classes: Sequence[str] | None = None,
                 metric: str | None = None, class_weight: str | None = None, refit: str = DEFAULT_REFIT,
                 preprocess: str = "standardize", seed: int = 0, backbone_spec: dict[str, Any] | None = None,
                 train_fingerprint: str | None = None, min_positives: int = 5, threshold_tol: float | None = None,
                 head_params: dict[str, Any] | None = None, threshold_mode: str = "per-class",
                 validation_fraction: float = 0.2, embed_device: str = "auto", embed_batch_size: int | None = None,
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
        self.validation_fraction = validation_fraction
        self.embed_device = embed_device
        self.embed_batch_size = embed_batch_size
        self.head = head  # an estimator to fit instead of make_head(head_name) (e.g. a fine-tuned layer)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    # ---------------------------------------------------------------------------------------- fit
    def _encode_targets(self, y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
        """(class names, encoded y): indices for single-label, the 0/1 matrix for multilabel."""
        if task == "multilabel":
            Y = np.asarray(y)
            if Y.ndim != 2:
                raise ModelFitError("multilabel targets must be a multi-hot matrix (rows x labels)")
            names = list(self.classes) if self.classes is not None else list(range(Y.shape[1]))
            if len(names) != Y.shape[1]:
                raise ModelFitError(f"{len(names)} class names for {Y.shape[1]} label columns")
            return np.array(names, dtype=object if self.classes is not None else None), Y.astype(np.uint8)
        if self.classes is not None:
            names = np.array(list(self.classes), dtype=object)
            if y.dtype.kind in "iu":  # featpipe's own convention: indices into ``classes``
                if len(y) and (y.min() < 0 or y.max() >= len(names)):
                    raise ModelFitError(f"class index out of range for {len(names)} classes")
                return names, y.astype(np.int64)
            lookup = {str(c): i for i, c in enumerate(names)}
            unknown = sorted({str(v) for v in y} - set(lookup))
            if unknown:
                raise ModelFitError(f"labels not in classes: {', '.join(unknown[:5])}")
            return names, np.array([lookup[str(v)] for v in y], dtype=np.int64)
        names, idx = np.unique(y, return_inverse=True)
        return names, idx.astype(np.int64)

    def _split_validation(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Seeded train/validation rows: stratified when every class can be, else a plain shuffle."""
        from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

        f = self.validation_fraction
        if not 0 < f < 1:
            raise ModelFitError(f"validation_fraction must be in (0, 1), got {f}")
        dummy = np.zeros(len(y))
        if y.ndim == 1:
            try:
                return next(StratifiedShuffleSplit(1, test_size=f, random_state=self.seed).split(dummy, y))
            except ValueError:  # a class with one row, or fewer val rows than classes
                pass
        return next(ShuffleSplit(1, test_size=f, random_state=self.seed).split(dummy))

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> FeaturepipeModel:
        """Fit the head and tune thresholds; validation rows are ``X_val``/``y_val`` or carved from ``X``."""
        t0 = time.perf_counter()
        if hasattr(X, "iter_blocks"):  # featpipe.features.cache.H5Rows: a cache larger than memory, read in slabs
            y = np.asarray(y)
            self.n_features_in_ = int(X.shape[1])
        else:
            X, y = validate_data(self, X, y, multi_output=True, y_numeric=False)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if (X_val is None) != (y_val is None):
            raise ModelFitError("give both X_val and y_val, or neither")
        if X_val is not None:
            X_val = validate_data(self, X_val, reset=False)
            y_val = np.asarray(y_val)
            y_all = np.concatenate([y, y_val]) if y.ndim == 1 else np.vstack([y, y_val])
        else:
            y_all = y
        task = _infer_task(y_all) if self.task == "auto" else self.task
        names, enc = self._encode_targets(y_all, task)
        if task != "multilabel" and len(np.unique(enc[: len(y)])) < 2:
            raise ModelFitError("cannot fit with only one class present in the training targets (1 class)")
        if X_val is not None:
            Xtr, ytr, Xva, yva = X, enc[: len(y)], X_val, enc[len(y):]
        else:
            tr, va = self._split_validation(enc)
            Xtr, ytr, Xva, yva = X[tr], enc[tr], X[va], enc[va]

        metric = self.metric or DEFAULT_METRIC.get(task, "accuracy")
        main_metric_key(metric, task)  # validates
        if self.threshold_mode not in ("per-class", "global"):
            raise ModelFitError(f"unknown threshold mode {self.threshold_mode!r}; expected per-class or global")
        if self.head is not None:
            from sklearn.base import clone

            head = clone(self.head)
        else:
            head = make_head(self.head_name, task=task, preprocess=self.preprocess,
                             class_weight=self.class_weight, refit=self.refit, metric=metric, seed=self.seed,
                             **(self.head_params or {}))
        try:
            head.fit(Xtr, ytr, Xva, yva, **({} if task == "multilabel" else {"n_classes": len(names)}))
        except HeadError as e:
            raise ModelFitError(_named(str(e), names)) from None
        self.head_ = head
        self.task_ = task
        self.classes_ = names
        self.val_proba_ = head.val_proba_
        # thresholds belong to the final model: with a train+val refit they are tuned on out-of-fold
        # probabilities of the chosen configuration over train+val, else on the held-out val split
        if head.oof_proba_ is not None:
            y_thr, p_thr = np.concatenate([ytr, yva]), head.oof_proba_
        else:
            y_thr, p_thr = yva, head.val_proba_
        self.thresholds_, self.threshold_ = tune_thresholds(task, y_thr, p_thr, metric, self.min_positives,
                                                            self.threshold_tol, self.threshold_mode)
        if self.threshold_ is not None:
            self.threshold_["tuned_on"] = head.selection_["thresholds_from"]
        self.oof_proba_ = head.oof_proba_
        self.selection_ = dict(head.selection_)
        name = {i: str(c) for i, c in enumerate(names)}
        if self.selection_.get("auto_cv"):
            self.selection_["auto_cv"] = _named(self.selection_["auto_cv"], names)
        if "cv_labels" in self.selection_:
            self.selection_["cv_labels"] = [name[k] for k in self.selection_["cv_labels"]]
        if task == "multilabel":
            self.params_ = {name[k]: v for k, v in head.params_.items()}
            self.search_ = [{**s, "label": name[s["label"]]} for s in head.search_]
        else:
            self.params_ = dict(head.params_)
            self.search_ = list(head.search_)
        self.skipped_labels_ = [{**s, "label": name[s["label"]]} for s in head.skipped_labels_]
        self.preprocessing_, self.weights_ = _record_backbone(self.backbone_spec)
        self.versions_ = library_versions()
        self.last_errors_: list[tuple[str, str]] = []
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    @property
    def versions(self) -> dict[str, str]:
        """Library versions at fit time (kept under its pre-scikit-learn name)."""
        return self.versions_

    @versions.setter
    def versions(self, value: dict[str, str]) -> None:
        self.versions_ = value

    # ------------------------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "head_")
        except NotFittedError:
            raise ModelNotFittedError(
                "this FeaturepipeModel is not fitted yet; call fit() or load a saved model") from None

    def _features(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(features, ok rows); images are embedded with the recorded backbone and preprocessing."""
        if not _is_image_input(X):
            X = validate_data(self, X, reset=False)
            self.last_errors_ = []
            return X, np.ones(len(X), dtype=bool)
        paths = expand_image_paths(X)
        if not paths:
            raise ModelError("no images to predict: the given paths hold no image files")
        if not self.backbone_spec:
            raise ModelError("this model has no recorded backbone, so it can only predict on feature arrays")
        feats, ok, errors = self._embed(paths)
        if feats.shape[1] != self.n_features_in_:
            raise ModelError(f"the backbone gave {feats.shape[1]} features, the head expects {self.n_features_in_}")
        self.last_errors_ = [(p, e or "unreadable") for p, o, e in zip(paths, ok, errors, strict=True) if not o]
        return feats.astype(np.float64), np.asarray(ok, dtype=bool)

    def backbone(self) -> Any:
        """The loaded backbone: weights found on this machine by hash, preprocessing as recorded."""
        from featpipe.features.embed import _cached_backbone
        from featpipe.hardware import resolve_device

        self._check_fitted()
        spec = self.resolved_backbone_spec()
        pre = spec.pop("preprocessing", None)
        return _cached_backbone(json.dumps(spec, sort_keys=True), json.dumps(pre, sort_keys=True),
                                resolve_device(self.embed_device))

    def resolved_backbone_spec(self) -> dict[str, Any]:
        """The recorded backbone spec, its weights located on this machine (see docs/heads.md) and its
        recorded preprocessing under ``preprocessing``; a fused spec gets the same for each part."""
        from featpipe.backbones import locate_weights

        bundle = getattr(self, "bundle_dir_", None)
        dirs = [Path(bundle), Path(bundle) / "weights"] if bundle else []
        dirs += [Path(d) for d in getattr(self, "recorded_weight_dirs_", None) or []]
        spec = dict(self.backbone_spec or {})
        if spec.get("kind") == "fused":  # several backbones, features concatenated
            records = (getattr(self, "weights_", None) or {}).get("parts") or [None] * len(spec["parts"])
            spec["parts"] = [locate_weights(part, rec, dirs) for part, rec in zip(spec["parts"], records, strict=True)]
            return spec
        spec.pop("preprocessing", None)
        return {**locate_weights(spec, getattr(self, "weights_", None), dirs),
                "preprocessing": getattr(self, "preprocessing_", None)}

    def _embed(self, paths: list[str]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        from featpipe.features.embed import embed_paths

        return embed_paths(self.resolved_backbone_spec(), paths, batch_size=self.embed_batch_size, num_workers=0,
                           device=self.embed_device)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, C)`` probabilities (binary: ``[neg, pos]``); rows of unreadable images are nan."""
        self._check_fitted()
        feats, ok = self._features(X)
        out = np.full((len(feats), len(self.classes_)), np.nan)
        if ok.any():
            out[ok] = self.head_.predict_proba(feats[ok])
        return out

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class indices (``-1`` for nan rows) or multi-hot ``uint8`` from probabilities, with the tuned thresholds."""
        self._check_fitted()
        return apply_thresholds(proba, self.task_, self.thresholds_)

    def predict(self, X: Any) -> np.ndarray:
        """Class labels from ``classes_`` (``None`` for an unreadable image) or, for multilabel, the
        indicator matrix with ``classes_`` as columns (an all-zero row for an unreadable image)."""
        return self._predict_from_proba(self.predict_proba(X))

    def _predict_from_proba(self, proba: np.ndarray) -> np.ndarray:
        dec = self.decide(proba)
        if self.task_ == "multilabel":
            return dec.astype(np.int64)
        if (dec < 0).any():
            out = np.empty(len(dec), dtype=object)
            out[:] = [None if d < 0 else self.classes_[d] for d in dec]
            return out
        return self.classes_[dec]

    def predict_labels(self, X: Any) -> list[Any]:
        """One entry per row: the class label, or (multilabel) the list of label names; None if unreadable."""
        return self.labels_from_proba(self.predict_proba(X))

    def labels_from_proba(self, proba: np.ndarray) -> list[Any]:
        """:meth:`predict_labels` from already computed probabilities."""
        dec = self.decide(proba)
        bad = np.isnan(proba).any(axis=1)
        if self.task_ == "multilabel":
            return [None if b else [str(c) for c, on in zip(self.classes_, row, strict=True) if on]
                    for row, b in zip(dec, bad, strict=True)]
        return [None if d < 0 else self.classes_[d] for d in dec]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """The model's main metric (``metric``, default per task) of :meth:`predict` against ``y``.

        ``y`` is in the same form as ``fit`` takes it (labels, indices into ``classes``, or multi-hot);
        rows of unreadable images are left out, as in metrics.json.
        """
        from featpipe.heads.metrics import evaluate

        if sample_weight is not None:
            raise ModelError("score() does not support sample_weight")
        proba = self.predict_proba(X)
        y = np.asarray(y)
        if self.task_ != "multilabel":
            y = column_or_1d(y)
            if self.classes is not None and y.dtype.kind in "iu":
                enc = y.astype(np.int64)
            else:
                lookup = {str(c): i for i, c in enumerate(self.classes_)}
                unknown = sorted({str(v) for v in y} - set(lookup))
                if unknown:
                    raise ModelError(f"labels not in classes_: {', '.join(unknown[:5])}")
                enc = np.array([lookup[str(v)] for v in y], dtype=np.int64)
        else:
            enc = y.astype(np.uint8)
        return float(evaluate(enc, proba, self.decide(proba), self.task_, [str(c) for c in self.classes_],
                              self.metric)["main"])

    # ------------------------------------------------------------------------------------- disk
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (joblib) and ``path.sha256`` (its hex digest)."""
        import joblib

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        joblib.dump(self, tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        write_sidecar(path, digest)
        return path

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: the base class may hand out the live __dict__
        state.pop("bundle_dir_", None)  # where the file lay is set again by load_model
        state.pop("recorded_weight_dirs_", None)
        # a bundle names its weights by package / file name / hash (weights_), never by this machine's paths
        state["backbone_spec"] = _without_local_paths(state.get("backbone_spec"))
        state["bundle_format"] = BUNDLE_FORMAT
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # plain joblib.load() lands here too, so a version change warns in any script
        state = dict(state)
        if state.pop("bundle_format", 1) < 2:  # featpipe 0.1 bundles: same head, renamed state
            if "versions" in state:
                state["versions_"] = state.pop("versions")
            if "head_" in state:
                state.setdefault("task_", state.get("task"))
                state.setdefault("preprocessing_", None)  # not recorded: the backbone's defaults are used
                state.setdefault("weights_", None)
        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and name not in state:
                state[name] = p.default  # parameters added since the bundle was written
        super().__setstate__(state)
        if "head_" in state:
            warn_if_versions_differ(state.get("versions_"), "this featpipe model")


def _record_backbone(spec: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(preprocessing, weights record) to store in a bundle, from a spec as the cache recorded it; a fused
    spec records each part's weights under ``parts`` (its parts carry their own preprocessing)."""
    if not spec:
        return None, None
    from featpipe.backbones import recorded_preprocessing, weights_record

    if spec.get("kind") == "fused":
        return None, {"parts": [weights_record(p) for p in spec["parts"]]}
    pre = spec.get("preprocessing")
    return (recorded_preprocessing(pre, spec.get("kind", "timm")) if pre else None), weights_record(spec)


def _without_local_paths(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """``spec`` with no path of the machine that made it: no ``weights_path``, an ONNX file by its name."""
    if not spec:
        return spec
    out = {k: v for k, v in spec.items() if k != "weights_path"}
    if out.get("kind") == "onnx" and out.get("arch"):
        out["arch"] = Path(out["arch"]).name
    if out.get("kind") == "fused":
        out["parts"] = [_without_local_paths(p) for p in out["parts"]]
    return out
