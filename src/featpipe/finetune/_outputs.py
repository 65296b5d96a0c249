"""After training: embed every split with the best fine-tuned backbone and write the artifacts fit-head
writes (metrics.json with the same schema, predictions.npz, model.joblib), so report and predict
treat a fine-tune run like any other."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from featpipe.backbones import BEST_CHECKPOINT, FINETUNED, load_backbone, read_checkpoint, resolve_spec
from featpipe.finetune._bundle import FinetunedHead
from featpipe.heads.metrics import BOOTSTRAP
from featpipe.runs import read_record, write_run_files
from featpipe.versions import FEATPIPE_VERSION


def write_outputs(run: Any, history: dict[str, Any]) -> dict[str, Any]:
    from featpipe.features.cache import OK
    from featpipe.features.embed import run_backbone
    from featpipe.heads.model import FeaturepipeModel
    from featpipe.runs.fit import predictions_record, run_files, score_splits

    out, manifest, task, classes, cfg = run.out, run.manifest, run.task, run.classes, run.cfg
    t0 = time.perf_counter()
    spec = resolve_spec(f"{FINETUNED}{out}", precision="auto", device=run.device, seed=cfg.seed)
    backbone = load_backbone(spec, run.device)
    rows = np.concatenate([run.rows[s] for s in ("train", "val", "test")])
    feats = np.zeros((len(manifest), backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(len(manifest), dtype=bool)
    for b in run_backbone(backbone, manifest.paths, rows, array=manifest.array, batch_size=64,
                          num_workers=run.workers):
        feats[b.rows] = b.features
        ok[b.rows] = b.status == OK
        for r, s, e in zip(b.rows, b.status, b.errors, strict=True):
            if s != OK:
                run.failed[int(r)] = e
    embed_seconds = time.perf_counter() - t0
    idx = {s: run.rows[s][ok[run.rows[s]]] for s in ("train", "val", "test")}
    ck = read_checkpoint(out / BEST_CHECKPOINT)
    head = FinetunedHead(coef=ck["head_state"]["weight"].double().numpy(),
                         intercept=ck["head_state"]["bias"].double().numpy(), task=task)
    Y = np.asarray(manifest.labels)
    X = feats.astype(np.float64)
    fp = hashlib.sha256(f"{spec.weights_id}\0{manifest.fingerprint()}".encode()).hexdigest()[:16]
    model = FeaturepipeModel(
        head_name="finetune", task=task, classes=classes, metric=run.metric, class_weight=cfg.class_weight,
        preprocess="none", seed=cfg.seed, backbone_spec={**spec.to_dict(), "preprocessing": backbone.preprocessing}, train_fingerprint=fp,
        head=head,
    ).fit(X[idx["train"]], Y[idx["train"]], X[idx["val"]], Y[idx["val"]])
    probas = {s: model.predict_proba(X[idx[s]]) for s in ("train", "val", "test") if len(idx[s])}
    scores, preds = score_splits(model, Y, idx, probas, classes, run.metric, seed=cfg.seed)
    run_name = f"{manifest.name}__{run.spec.tag()}__{out.name}"
    metrics = {
        "featpipe_version": FEATPIPE_VERSION,
        "run": run_name,
        "head": f"finetune-{cfg.recipe}",
        "head_type": f"fine-tuned end to end ({cfg.recipe})",
        "out_of_core": False,
        "task": task,
        "classes": classes,
        "metric": run.metric,
        "seed": cfg.seed,
        "cache": {
            "path": None, "key": spec.weights_id, "backbone": spec.to_dict(), "layer": spec.layer,
            "feature_dim": int(backbone.feature_dim), "embed_seconds": embed_seconds, "dataset": manifest.info(),
        },
        "params": {k: v for k, v in cfg.to_dict().items() if k not in ("device", "num_workers", "cache_dir", "checkpoint_every")},
        "head_params": {},
        "search": [],
        "refit": "train",
        "preprocess": "none",
        "class_weight": cfg.class_weight or "none",
        "threshold": model.threshold_,
        "skipped_labels": [],
        "scores": scores,
        "val_scores_from": f"best epoch ({history.get('best_epoch')}) on validation, by early stopping",
        "gap": scores["train"]["main"] - scores["val"]["main"],
        "gap_definition": "the best epoch's model on train minus the same model on val",
        # probe + epochs + this final pass: the same over an interrupted and resumed run
        "fit_seconds": float((history.get("linear_probe") or {}).get("seconds", 0.0))
        + float(history.get("train_seconds", 0.0)) + time.perf_counter() - t0,
        "train_fingerprint": fp,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": model.versions_,
        "selection": model.selection_,
        "bootstrap": {**BOOTSTRAP, "seed": cfg.seed, "interval": "scores.test.main_ci"},
        "finetune": {
            "best_epoch": history.get("best_epoch"), "epochs_run": len(history["epochs"]),
            "stopped_early": history.get("stopped_early", False), "base_backbone": run.spec.to_dict(),
            "train_seconds": history.get("train_seconds"), "precision": cfg.precision,
            "device": run.device, "threads": torch.get_num_threads(),
            "linear_probe": history.get("linear_probe"), "n_unreadable": len(run.failed),
            "decoded_once": history.get("decoded_once", False), "batch_size": cfg.batch_size,
            # planned and actual time of a run inside --budget (actual: up to these metrics)
            "budget": {**history["budget"], "actual_seconds": run.clock.elapsed()} if run.clock else None,
        },
    }
    predictions = predictions_record(manifest.ids, manifest.paths, Y, idx, probas, preds)
    return read_record(write_run_files(out, metrics, run_files(model, predictions)))
