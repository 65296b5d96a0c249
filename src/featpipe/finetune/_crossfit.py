"""Cross-fitted fine-tunes for the report's label check (``cross_fit: K``).

K fine-tunes, each trained without one K-th of the labelled images (folds over every split, stratified
by class, seeded); each scores the images it left out, so every labelled image gets probabilities from a
model that never trained on it: the out-of-fold probabilities confident learning needs (Northcutt et
al. 2021 cross-validated their CIFAR-10 network the same way). No model is kept: ``oof.npz`` holds the
probabilities and ``cross-fit.json`` (written last, so its presence means the whole run finished) the
record. A killed run resumes at the first fold whose part (``oof-fold-K.npz``) is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.checksum import atomic_write, atomic_write_text
from featpipe.data import Manifest
from featpipe.errors import FinetuneError
from featpipe.finetune._config import FinetuneConfig
from featpipe.folders import writable_folder
from featpipe.versions import FEATPIPE_VERSION

OOF_FILE = "oof.npz"
RECORD_FILE = "cross-fit.json"


def folds_of(manifest: Manifest, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of every labelled image, -1 for the unlabelled: stratified by class where every
    class has k images (scikit-learn's StratifiedKFold), else plain shuffled folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    rows = np.flatnonzero(np.asarray(manifest.labeled, dtype=bool))
    if len(rows) < 2 * k:
        raise FinetuneError(f"cross_fit {k} needs at least {2 * k} labelled images, the data has {len(rows)}")
    folds = np.full(len(manifest), -1, dtype=np.int64)
    y = np.asarray(manifest.labels)[rows]
    single = manifest.task != "multilabel" and np.bincount(y.astype(np.int64)).min(initial=k) >= k
    split = (StratifiedKFold(k, shuffle=True, random_state=seed).split(rows, y) if single
             else KFold(k, shuffle=True, random_state=seed).split(rows))
    for f, (_, held) in enumerate(split):
        folds[rows[held]] = f
    return folds


def _fold_manifest(manifest: Manifest, folds: np.ndarray, f: int) -> Manifest:
    """The images of fold ``f`` as the test split; the other labelled images train (validation ones stay)."""
    splits = [("test" if g == f else "val" if s == "val" else "train") if g >= 0 else s
              for s, g in zip(manifest.splits, folds.tolist(), strict=True)]
    return dataclasses.replace(manifest, splits=splits)


def _identity(manifest: Manifest, cfg: FinetuneConfig) -> str:
    text = json.dumps({"data": manifest.fingerprint(), "config": cfg.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_done(out: str | Path, manifest: Manifest, config: FinetuneConfig) -> bool:
    """Whether ``out`` holds the finished cross-fit of this data and config."""
    try:
        return json.loads((Path(out) / RECORD_FILE).read_text()).get("identity") == _identity(manifest, config)
    except (OSError, ValueError, AttributeError):
        return False


def _save_npz(path: Path, **arrays: Any) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a bare temporary name
            np.savez(f, **arrays)

    atomic_write(path, write)


def cross_fit(manifest: Manifest, config: FinetuneConfig, out: str | Path, *, force: bool = False,
              progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``config.cross_fit`` fine-tunes on ``manifest`` and write ``out/oof.npz`` and
    ``out/cross-fit.json``; returns the record. ``config.budget`` is shared equally between the folds."""
    from featpipe.finetune._train import finetune

    log = log or (lambda msg: print(msg, file=sys.stderr))
    k = int(config.cross_fit)
    if k < 2:
        raise FinetuneError("cross_fit needs at least 2 folds")
    out = writable_folder(out, "cross-fit output")
    one = config.model_copy(update={"cross_fit": 0, "budget": config.budget / k if config.budget else None})
    ident = _identity(manifest, config)
    record_path = out / RECORD_FILE
    if not force and is_done(out, manifest, config):
        log(f"{out} already holds this cross-fit: nothing to do")
        return json.loads(record_path.read_text())
    record_path.unlink(missing_ok=True)
    (out / OOF_FILE).unlink(missing_ok=True)
    folds = folds_of(manifest, k, one.seed)
    n, c = len(manifest), len(manifest.classes)
    proba = np.full((n, c), np.nan)
    fold_scores = []
    for f in range(k):
        part = out / f"oof-fold-{f + 1}.npz"
        fold_dir = out / f"fold-{f + 1}"
        if part.exists() and not force:
            with np.load(part, allow_pickle=False) as z:
                if str(z["identity"]) == ident:
                    proba[z["rows"]] = z["proba"]
                    fold_scores.append(json.loads(str(z["score"])))
                    log(f"cross-fit fold {f + 1}/{k}: done earlier, kept")
                    continue
        held = np.flatnonzero(folds == f)
        log(f"cross-fit fold {f + 1}/{k}: training without {len(held)} labelled images, then scoring them")
        res = finetune(_fold_manifest(manifest, folds, f), one, fold_dir, force=True, progress=progress, log=log)
        with np.load(fold_dir / "predictions.npz", allow_pickle=False) as z:
            where = {p: i for i, p in enumerate(z["paths"].tolist())}
            rows = np.array([r for r in held if manifest.paths[r] in where], dtype=np.int64)
            proba[rows] = z["proba"][[where[manifest.paths[r]] for r in rows]]
        score = {"fold": f + 1, "n_held_out": int(len(held)), "n_scored": int(len(rows)),
                 "best_epoch": res.best_epoch, "val": res.metrics["scores"]["val"]["main"],
                 "held_out": res.test_score, "epochs": len(res.history.get("epochs") or [])}
        fold_scores.append(score)
        _save_npz(part, identity=ident, rows=rows, proba=proba[rows], score=json.dumps(score))
        shutil.rmtree(fold_dir, ignore_errors=True)  # its "test" is a fold: it must not pass for a run
    labelled = folds >= 0
    scored = labelled & ~np.isnan(proba).any(1)
    y = np.asarray(manifest.labels)
    if manifest.task == "multilabel":
        acc = float(((proba[scored] >= 0.5) == (y[scored] > 0)).mean()) if scored.any() else math.nan
    else:
        acc = float((proba[scored].argmax(1) == y[scored]).mean()) if scored.any() else math.nan
    _save_npz(out / OOF_FILE, paths=np.asarray(manifest.paths, dtype=str), ids=np.asarray(manifest.ids, dtype=str),
              labels=y, labeled=np.asarray(manifest.labeled, dtype=bool), fold=folds, proba=proba)
    record = {
        "kind": "cross-fit", "featpipe_version": FEATPIPE_VERSION, "identity": ident,
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "folds": k, "seed": one.seed,
        "backbone": config.backbone, "config": config.to_dict(), "task": manifest.task,
        "classes": list(manifest.classes), "dataset": manifest.info(), "dataset_fingerprint": manifest.fingerprint(),
        "n_labeled": int(labelled.sum()), "n_scored": int(scored.sum()), "oof_accuracy": acc,
        "fold_scores": fold_scores,
    }
    atomic_write_text(record_path, json.dumps(record, indent=1, default=str))
    for f in range(k):
        (out / f"oof-fold-{f + 1}.npz").unlink(missing_ok=True)
    log(f"cross-fit: {int(scored.sum())} of {int(labelled.sum())} labelled images scored out of fold "
        f"(accuracy {acc:.4f}) -> {out / OOF_FILE}")
    return record
