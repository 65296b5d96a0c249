"""Fit stage: heads on a feature cache and write the contract's artifacts (model, metrics, predictions).

Hyper-parameters and thresholds are chosen on train + val only; test is scored once at the end, with a
seeded 95% bootstrap interval. Validation scores are *selection* scores: the best of several
configurations on the same rows, so optimistic (recorded as such). With ``refit="train+val"`` (the
default; or ``cv=K``, or a validation split too small to select on) the final model is fitted on every
labelled row and its thresholds are tuned on out-of-fold probabilities over train+val, its train score
is its score on the rows it was fitted on and the gap is that minus its out-of-fold score, so both
numbers describe one model. Out of core the final model is fitted on train (see :data:`OUT_OF_CORE`).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.errors import HeadError
from featpipe.features.cache import FeatureCache
from featpipe.heads import DEFAULT_REFIT, STREAMING_SUFFIX, head_names
from featpipe.heads.metrics import BOOTSTRAP, DEFAULT_METRIC, bootstrap_ci, evaluate
from featpipe.heads.model import FeaturepipeModel
from featpipe.runs import write_run_files
from featpipe.runs.config import FitConfig
from featpipe.versions import FEATPIPE_VERSION


@dataclass
class HeadRun:
    """One fitted head on one cache: the model bundle, its metrics dict and per-row predictions."""

    run: str
    head: str
    model: Any
    metrics: dict[str, Any]
    predictions: dict[str, np.ndarray]


def train_fingerprint(cache: Any, rows: np.ndarray) -> str:
    """Identifies the training data: cache key + ids and labels of the rows a head was fitted on."""
    h = hashlib.sha256(str(cache.key).encode())
    for i in np.asarray(cache.ids)[rows]:
        h.update(str(i).encode() + b"\0")
    h.update(np.ascontiguousarray(np.asarray(cache.labels)[rows]).tobytes())
    return h.hexdigest()[:16]


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# a head's fit holds about three float64 copies of its rows (features, preprocessed, search buffers)
FIT_COPIES = 3
OUT_OF_CORE = {"logistic": "SGD log-loss over slabs", "mlp": "mini-batches from slabs",
               "lgbm": "lightgbm.Sequence + IncrementalPCA"}


def parse_memory(text: str | int | None) -> int | None:
    """``"8GB"``, ``"512M"``, ``"1.5g"`` or a byte count -> bytes (binary units). A size parser is a few
    lines; no dependency does only this."""
    if text is None or isinstance(text, int):
        return text
    t = str(text).strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise HeadError(f"cannot read memory size {text!r}; write e.g. 8GB, 512MB or a number of bytes") from None
    if value <= 0:
        raise HeadError(f"memory size must be positive, got {text!r}")
    return int(value * _UNITS[unit])


def default_memory_budget() -> int | None:
    """Half of the machine's physical memory (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(n_rows: int, dim: int, max_memory: str | int | None = None) -> bool:
    """Whether a head's fit on ``n_rows`` x ``dim`` features stays inside the memory budget."""
    budget = parse_memory(max_memory) if max_memory is not None else default_memory_budget()
    return budget is None or n_rows * dim * 8 * FIT_COPIES <= budget


def open_cache(path: str | Path, max_memory: str | int | None = None) -> FeatureCache:
    """Open a cache for fitting: features in memory when they fit the budget, else left on disk."""
    from featpipe.features.cache import SLAB_BYTES, _open_h5

    with _open_h5(Path(path), "r") as f:
        n, dim = f["features"].shape
    budget = parse_memory(max_memory) if max_memory is not None else default_memory_budget()
    # out of core, a fit holds a few float64 copies of one slab: a sixteenth of the budget, 1-32 MB
    slab = SLAB_BYTES if budget is None else int(min(SLAB_BYTES, max(1 << 20, budget // 16)))
    return FeatureCache.open(path, in_memory=fits_in_memory(int(n), int(dim), budget), slab_bytes=slab)


def _rows(cache: Any, split: str) -> np.ndarray:
    return np.asarray(cache.split_indices(split), dtype=np.int64)


def fit_cache(cache: Any, head: str = "logistic", config: FitConfig | None = None, *, metric: str | None = None, class_weight: str | None = None,
              refit: str = DEFAULT_REFIT, preprocess: str = "standardize", seed: int = 0,
              head_params: dict[str, dict[str, Any]] | None = None, min_positives: int = 5,
              threshold_mode: str = "per-class", cv: int | None = None,
              n_bootstrap: int = BOOTSTRAP["n_resamples"]) -> list[HeadRun]:
    """Fit ``head`` (or every head for ``"all"``) on an open :class:`featpipe.features.cache.FeatureCache`.

    ``head_params`` maps a head name to extra constructor arguments (e.g. a smaller grid); ``cv=K``
    chooses hyper-parameters by K-fold CV over train+val instead of the val split (then refits on
    train+val); ``cv=None`` does so only where the val split is too small to select on
    (``selection.auto_cv`` in the metrics says why), ``cv=0`` never. ``n_bootstrap`` resamples of the
    test rows give each test score its interval. Out of core (a cache larger than the memory budget)
    the final model is fitted on train: ``refit`` is then recorded as ``"train"``. ``config`` (the `fit:`
    section, as the command line and pipeline files give it) sets the keywords it covers, in their place.
    """
    if config is not None:
        o = config.fit_options()
        metric, class_weight, refit, preprocess = o["metric"], o["class_weight"], o["refit"], o["preprocess"]
        min_positives, threshold_mode, cv, n_bootstrap = (o["min_positives"], o["threshold_mode"], o["cv"],
                                                           o["n_bootstrap"])
    names = head_names(head)
    task = cache.task
    metric = metric or DEFAULT_METRIC[task]
    tr, va, te = _rows(cache, "train"), _rows(cache, "val"), _rows(cache, "test")
    if len(tr) == 0:
        raise HeadError(f"cache {Path(cache.path).name} has no labelled, embedded train rows")
    if len(va) == 0:
        raise HeadError(f"cache {Path(cache.path).name} has an empty validation split: heads are tuned on "
                        "validation; re-split the dataset with a val fraction")
    Y = np.asarray(cache.labels)
    if cache.in_memory:
        X = np.asarray(cache.features, dtype=np.float64)
        Xs = {"train": X[tr], "val": X[va], "test": X[te]}
    else:  # out of core: train and test rows stay on disk, validation (small) is read into memory
        Xs = {"train": cache.features.subset(tr), "val": cache.features.subset(va).to_array(),
              "test": cache.features.subset(te)}
    fp = train_fingerprint(cache, tr)
    run_name = Path(cache.path).stem
    out: list[HeadRun] = []
    for name in names:
        t0 = time.perf_counter()
        head_name = name if cache.in_memory else name + STREAMING_SUFFIX
        model = FeaturepipeModel(
            head_name=head_name, task=task, classes=list(cache.classes), metric=metric, class_weight=class_weight,
            refit=refit, preprocess=preprocess, seed=seed,
            backbone_spec={**cache.backbone, "preprocessing": cache.config.get("preprocessing")},
            train_fingerprint=fp, min_positives=min_positives,
            threshold_mode=threshold_mode, head_params=_with_cv((head_params or {}).get(name), cv),
        )
        if not cache.in_memory:  # a train+val refit needs train+val in memory, several times over
            model.set_params(refit="train")
        model.fit(Xs["train"], Y[tr], Xs["val"], Y[va])
        fit_seconds = time.perf_counter() - t0
        refit_used = model.head_.refit_
        probas = {"train": _proba(model, Xs["train"]), "val": model.val_proba_}
        if len(te):
            probas["test"] = _proba(model, Xs["test"])  # the only time test rows are touched
        rows = {"train": tr, "val": va, "test": te}
        scores, preds = score_splits(model, Y, rows, probas, cache.classes, metric, seed=seed,
                                     n_bootstrap=n_bootstrap)
        if refit_used == "train+val":
            # one model: its score on its own fit rows vs the out-of-fold score of the same configuration
            trva = np.concatenate([tr, va])
            fit_p = np.concatenate([probas["train"], _proba(model, Xs["val"])])
            scores["fit_rows"] = evaluate(Y[trva], fit_p, model.decide(fit_p), task, cache.classes, metric)
            scores["oof"] = evaluate(Y[trva], model.oof_proba_, model.decide(model.oof_proba_), task,
                                     cache.classes, metric)
            gap = scores["fit_rows"]["main"] - scores["oof"]["main"]
            gap_def = "final model on train+val (its fit rows) minus out-of-fold score on train+val"
        else:
            gap = scores["train"]["main"] - scores["val"]["main"]
            gap_def = "final model on train minus the same model on val"
        metrics = {
            "featpipe_version": FEATPIPE_VERSION,
            "run": run_name,
            "head": name,
            "head_type": head_name if cache.in_memory else f"{name} (out of core: {OUT_OF_CORE[name]})",
            "out_of_core": not cache.in_memory,
            "task": task,
            "classes": list(cache.classes),
            "metric": metric,
            "seed": seed,
            "cache": {
                "path": str(cache.path), "key": cache.key, "backbone": dict(cache.backbone),
                "layer": cache.backbone.get("layer"), "feature_dim": int(cache.feature_dim),
                "embed_seconds": float(cache.embed_seconds), "dataset": cache.dataset,
            },
            "params": model.params_,
            "head_params": dict((head_params or {}).get(name) or {}),  # constructor settings beyond the defaults
            "search": model.search_,
            "refit": refit_used,
            "selection": {**model.selection_,
                          "note": "val scores are selection scores (best of the configurations tried on the "
                                  "same rows): optimistic; test is scored once"},
            "bootstrap": {**BOOTSTRAP, "n_resamples": n_bootstrap, "seed": seed, "interval": "scores.test.main_ci"},
            "preprocess": preprocess,
            "class_weight": class_weight or "none",
            "threshold": model.threshold_,
            "skipped_labels": model.skipped_labels_,
            "scores": scores,
            "val_scores_from": _val_scores_from(model.selection_),
            "gap": gap,
            "gap_definition": gap_def,
            "fit_seconds": fit_seconds,
            "train_fingerprint": fp,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": model.versions_,
        }
        predictions = predictions_record(cache.ids, cache.paths, Y, rows, probas, preds)
        out.append(HeadRun(run_name, name, model, metrics, predictions))
    return out


def predictions_record(ids: Any, paths: Any, Y: np.ndarray, rows: dict[str, np.ndarray],
                       probas: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of predictions.npz: per scored split, its rows' ids, paths, labels, probabilities, decisions."""
    used = [s for s in ("train", "val", "test") if s in probas]
    idx = np.concatenate([rows[s] for s in used])
    return {
        "ids": np.asarray(ids)[idx].astype(str),
        "paths": np.asarray(paths)[idx].astype(str),
        "split": np.concatenate([np.full(len(rows[s]), s) for s in used]).astype(str),
        "y_true": Y[idx],
        "proba": np.concatenate([probas[s] for s in used]).astype(np.float32),
        "pred": np.concatenate([preds[s] for s in used]),
    }


def _proba(model: FeaturepipeModel, X: Any) -> np.ndarray:
    """Probabilities for feature rows in memory or on disk (the head reads on-disk rows slab by slab)."""
    return model.predict_proba(X) if isinstance(X, np.ndarray) else model.head_.predict_proba(X)


def _with_cv(params: dict[str, Any] | None, cv: int | None) -> dict[str, Any] | None:
    return {**(params or {}), "cv": cv} if cv is not None else params


def _val_scores_from(selection: dict[str, Any]) -> str:
    if not selection.get("folds"):
        return "model fitted on train (held-out)"
    if "cv_labels" in selection:
        return ("out-of-fold probabilities of the chosen configuration for the labels chosen by CV "
                f"({', '.join(map(str, selection['cv_labels']))}); the model fitted on train for the others")
    return "out-of-fold probabilities of the chosen configuration"


def score_splits(model: FeaturepipeModel, Y: np.ndarray, rows: dict[str, np.ndarray],
                 probas: dict[str, np.ndarray], classes: Any, metric: str, *, seed: int,
                 n_bootstrap: int = BOOTSTRAP["n_resamples"]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A run's scores and decisions: per split, the metric table's scores of ``model``'s decisions on
    ``probas`` (with each class's threshold); val marked as a selection score (the configuration or epoch
    was chosen on it: optimistic); test with its seeded bootstrap interval, or ``None`` without test rows."""
    scores: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    for split, proba in probas.items():
        preds[split] = model.decide(proba)
        scores[split] = evaluate(Y[rows[split]], proba, preds[split], model.task_, classes, metric)
        _add_thresholds(scores[split], model)
    scores["val"]["selection"] = True
    if "test" in scores:
        ci = bootstrap_ci(metric, model.task_, Y[rows["test"]], probas["test"], preds["test"],
                          n_resamples=n_bootstrap, seed=seed)
        scores["test"]["main_ci"] = list(ci) if ci else None
    scores.setdefault("test", None)
    return scores, preds


def _add_thresholds(scores: dict[str, Any], model: Any) -> None:
    if model.thresholds_ is None:
        return
    classes = list(model.classes_)
    if model.task_ == "binary":
        scores["per_class"][classes[1]]["threshold"] = float(model.thresholds_)
    else:
        for c, t in zip(classes, model.thresholds_, strict=True):
            scores["per_class"][c]["threshold"] = float(t)


def write_run(run: HeadRun, out_dir: str | Path) -> Path:
    """Write ``out_dir/<run>/<head>/{model.joblib, model.joblib.sha256, predictions.npz}`` and, last, the
    run record ``metrics.json`` naming their hashes (:mod:`featpipe.runs.record`)."""
    return write_run_files(Path(out_dir) / run.run / run.head, run.metrics, run_files(run.model, run.predictions))


def run_files(model: FeaturepipeModel, predictions: dict[str, np.ndarray]) -> dict[str, Any]:
    """The writers of a run's files besides its record (fit-head and finetune write the same set)."""
    return {"model.joblib": model.save,
            "predictions.npz": lambda p: np.savez_compressed(p, **predictions)}
