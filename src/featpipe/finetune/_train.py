"""The fine-tune run: linear probe, end-to-end training with early stopping, resumable checkpoints,
then the same artifacts fit-head writes (metrics.json, predictions.npz, model.joblib)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from featpipe.backbones import BackboneSpec, load_backbone, resolve_spec
from featpipe.backbones._finetuned import BEST_CHECKPOINT, CHECKPOINT_FORMAT, FINETUNED
from featpipe.backbones._scratch import scratch_arch
from featpipe.backbones._torch import autocast
from featpipe.data.manifest import Manifest
from featpipe.errors import FinetuneError
from featpipe.finetune._config import FinetuneConfig
from featpipe.finetune._data import ImageRows, build_transforms, collate, native_size
from featpipe.finetune._net import (
    ClassifierNet,
    freeze,
    init_from_linear_probe,
    param_groups,
    set_train_mode,
    trainable_prefixes,
)
from featpipe.folders import writable_folder
from featpipe.metrics import DEFAULT_METRIC, evaluate, jsonable, main_metric_key

LAST_CHECKPOINT = "last.pt"
# config fields that do not change the result (a resumed run may change them)
_RUNTIME_FIELDS = ("device", "num_workers", "cache_dir", "checkpoint_every")


@dataclass
class FinetuneResult:
    out: Path
    metrics: dict[str, Any]
    history: dict[str, Any]
    best_epoch: int
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def test_score(self) -> float | None:
        test = self.metrics["scores"].get("test")
        return None if test is None else test["main"]


# ---------------------------------------------------------------------------------------- helpers


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's shuffle, augmentation and dropout: a resumed run replays the epoch exactly."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:4], "little")


def _rng_state() -> dict[str, Any]:
    """Every RNG's state in types ``torch.load(weights_only=True)`` reads (tensors, lists, numbers, strings)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()}},
            "python": {"version": version, "internal": list(internal), "gauss": gauss}}


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    py = rng["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def _plain(obj: Any) -> Any:
    """``obj`` with numpy values made Python ones (arrays: lists), nan and inf kept: a checkpoint's own
    records must load with ``weights_only=True``, which refuses numpy types."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _labelled_rows(manifest: Manifest, split: str) -> np.ndarray:
    sp = np.asarray(manifest.splits)
    return np.flatnonzero((sp == split) & np.asarray(manifest.labeled, dtype=bool))


def _model_default_size(spec: BackboneSpec) -> int | None:
    if spec.kind != "timm":
        return None
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


def _proba(logits: np.ndarray, task: str) -> np.ndarray:
    z = torch.as_tensor(logits, dtype=torch.float64)
    return (torch.sigmoid(z) if task == "multilabel" else torch.softmax(z, dim=1)).numpy()


def _score(y: np.ndarray, proba: np.ndarray, task: str, classes: list[str], metric: str) -> dict[str, Any]:
    """The contract's scores for one split (decisions at 0.5 / argmax: thresholds come with the bundle)."""
    from featpipe.thresholds import apply_thresholds

    return evaluate(y, proba, apply_thresholds(proba, task, None), task, classes, metric)


def _base_spec(cfg: FinetuneConfig, image_size: int | None) -> BackboneSpec:
    if cfg.scratch:
        name = scratch_arch(cfg.width, cfg.depth, cfg.in_channels)
        return resolve_spec(name, image_size=image_size, precision="fp32", seed=cfg.seed)
    if cfg.backbone.startswith(FINETUNED):
        raise FinetuneError("fine-tune a registry backbone, scratch-cnn or a timm model; finetuned:RUN is "
                            "for embed (to continue a run, use --resume)")
    return resolve_spec(cfg.backbone, weights=cfg.weights, pretrained=cfg.pretrained, layer=cfg.layer,
                        image_size=image_size, precision="fp32", seed=cfg.seed)


# ------------------------------------------------------------------------------------------ run


class _Run:
    """State of one fine-tune run (built fresh or from ``last.pt``)."""

    def __init__(self, manifest: Manifest, cfg: FinetuneConfig, out: Path, log: Callable[[str], None],
                 progress: bool) -> None:
        from featpipe.embed import default_workers
        from featpipe.hardware import precision_note, resolve_device

        self.manifest, self.out, self.log, self.progress = manifest, out, log, progress
        self.task, self.classes = manifest.task, list(manifest.classes)
        self.rows = {s: _labelled_rows(manifest, s) for s in ("train", "val", "test")}
        if len(self.rows["train"]) == 0:
            raise FinetuneError(f"dataset {manifest.name!r} has no labelled train images")
        if len(self.rows["val"]) == 0:
            raise FinetuneError(f"dataset {manifest.name!r} has an empty validation split: early stopping and "
                                "thresholds are tuned on validation; re-split with a val fraction")
        self.device = resolve_device(cfg.device)
        probe = _base_spec(cfg, None) if cfg.image_size is None else None
        native = native_size(manifest, self.rows["train"]) if cfg.image_size is None else None
        self.cfg = cfg.resolved(native, _model_default_size(probe) if probe else None)
        note = precision_note(self.cfg.precision, self.device, cfg.precision)
        if note:
            self.log(note)
        self.metric = self.cfg.metric or DEFAULT_METRIC[self.task]
        main_metric_key(self.metric, self.task)  # an unknown metric fails before any training
        # DataLoader worker processes: on CPU one, augmenting beside the training step; a GPU gets embed's count
        auto_workers = default_workers(self.device) if self.device.startswith("cuda") else 1
        self.workers = auto_workers if self.cfg.num_workers is None else self.cfg.num_workers
        self.spec = _base_spec(self.cfg, self.cfg.image_size)

    # ------------------------------------------------------------------------------- building
    def build(self) -> None:
        c = self.cfg
        _seed_all(c.seed)
        backbone = load_backbone(self.spec, self.device, trainable=True)
        self.data_config = dict(backbone.data_config)  # type: ignore[attr-defined]
        self.transforms = build_transforms(c, self.data_config)
        crop = float(self.data_config.get("crop_pct", 1.0)) or 1.0
        self.draft = int(math.ceil(max(self.data_config["input_size"][1:]) / crop))
        bnet = backbone.net  # type: ignore[attr-defined]
        self.feature_dim = backbone.feature_dim
        n_out = len(self.classes)
        torch.manual_seed(c.seed)
        self.net = ClassifierNet(bnet, self.feature_dim, n_out, float(c.dropout or 0.0)).to(self.device)
        self.prefixes = trainable_prefixes(bnet, c.unfreeze)
        freeze(self.net, self.prefixes)
        self.net = self.net.to(memory_format=torch.channels_last)
        y_tr = np.asarray(self.manifest.labels)[self.rows["train"]]
        self.criterion = self._criterion(y_tr)
        self.eval_criterion = nn.BCEWithLogitsLoss() if self.task == "multilabel" else nn.CrossEntropyLoss()
        self.opt = self._optimizer()
        bs = c.batch_size
        self.drop_last = len(self.rows["train"]) > bs  # a 1-image batch breaks BatchNorm in train mode
        n = len(self.rows["train"])
        self.steps_per_epoch = max(1, n // bs if self.drop_last else math.ceil(n / bs))
        self.sched = self._scheduler()
        self.scaler = torch.amp.GradScaler("cuda") if c.precision == "fp16" and self.device.startswith("cuda") else None

    def _criterion(self, y: np.ndarray) -> nn.Module:
        c = self.cfg
        if self.task == "multilabel":
            pw = None
            if c.pos_weight == "auto":
                pos = y.sum(0).astype(float)
                # negatives / positives per label, capped so a label with one positive cannot dominate
                pw = torch.as_tensor(np.minimum((len(y) - pos) / np.maximum(pos, 1.0), 100.0), dtype=torch.float32)
            return nn.BCEWithLogitsLoss(pos_weight=None if pw is None else pw.to(self.device))
        weight = None
        if c.class_weight == "balanced":
            counts = np.bincount(y.astype(int), minlength=len(self.classes)).astype(float)
            w = np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1.0)), 0.0)
            weight = torch.as_tensor(w, dtype=torch.float32, device=self.device)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=c.label_smoothing)

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        assert c.lr is not None and c.backbone_lr_mult is not None and c.weight_decay is not None
        groups = param_groups(self.net, c.lr, c.lr * c.backbone_lr_mult, c.weight_decay)
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0)
        return torch.optim.AdamW(groups, lr=c.lr)

    def _scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler as S

        c = self.cfg
        assert c.epochs is not None
        total = c.epochs * self.steps_per_epoch
        warm = min(int(round(c.warmup_epochs * self.steps_per_epoch)), max(total - 1, 0))
        if c.schedule == "onecycle":
            return S.OneCycleLR(self.opt, max_lr=[g["lr"] for g in self.opt.param_groups], total_steps=total,
                                pct_start=max(warm / total, 0.05))
        if c.schedule == "constant":
            return S.LinearLR(self.opt, start_factor=0.01, total_iters=warm) if warm else S.ConstantLR(self.opt, 1.0, 0)
        cosine = S.CosineAnnealingLR(self.opt, T_max=max(total - warm, 1))
        if not warm:
            return cosine
        return S.SequentialLR(self.opt, [S.LinearLR(self.opt, start_factor=0.01, total_iters=warm), cosine],
                              milestones=[warm])

    # ------------------------------------------------------------------------------ linear probe
    def linear_probe(self) -> dict[str, Any]:
        """Fit featpipe's logistic head (C tuned on val) on frozen features of the same input size,
        reusing or filling the feature cache, and start the classifier layer from it."""
        from featpipe.cache import FeatureCache
        from featpipe.embed import embed_dataset
        from featpipe.heads import make_head

        t0 = time.perf_counter()
        lp_spec = resolve_spec(self.cfg.backbone, weights=self.cfg.weights, pretrained=self.cfg.pretrained,
                               layer=self.cfg.layer, image_size=self.cfg.image_size, precision="auto",
                               seed=self.cfg.seed, device=self.device)
        res = embed_dataset(self.manifest, lp_spec, cache_dir=self.cfg.cache_dir, device=self.device,
                            progress=self.progress, seed=self.cfg.seed)
        cache = FeatureCache.open(res.path)
        tr, va = (np.asarray(cache.split_indices(s), dtype=np.int64) for s in ("train", "val"))
        X, Y = np.asarray(cache.features, dtype=np.float64), np.asarray(cache.labels)
        head = make_head("logistic", task=self.task, preprocess="standardize", class_weight=self.cfg.class_weight,
                         metric=self.metric, seed=self.cfg.seed)
        kw = {} if self.task == "multilabel" else {"n_classes": len(self.classes)}
        head.fit(X[tr], Y[tr], X[va], Y[va], **kw)
        init_from_linear_probe(self.net.fc, head, self.task)
        val = _score(Y[va], head.val_proba_, self.task, self.classes, self.metric)["main"]
        info = {"cache": str(res.path), "cache_reused": res.n_computed == 0, "params": head.params_,
                f"val_{self.metric}": val, "seconds": time.perf_counter() - t0}
        self.log(f"linear probe: val {self.metric} {val:.4f} (C={head.params_.get('C', '-')}, "
                 f"{info['seconds']:.0f}s, cache {'reused' if info['cache_reused'] else 'filled'})")
        return info

    # -------------------------------------------------------------------------------- epochs
    def _loader(self, rows: np.ndarray, transform: Callable, shuffle: bool = False, epoch: int = 0,
                seed: int | None = None, offset: int = 0) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.cfg.seed, epoch))  # worker seeds come from it, not the global RNG
        ds = ImageRows(self.manifest, rows, transform, self.draft, seed=seed, offset=offset)
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=shuffle, generator=g, collate_fn=collate,
                          num_workers=self.workers if len(rows) > self.cfg.batch_size else 0,
                          pin_memory=self.device.startswith("cuda"))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Train rows in this epoch's shuffled order (a function of seed and epoch; drop_last applied)."""
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.cfg.seed, epoch))
        order = self.rows["train"][torch.randperm(len(self.rows["train"]), generator=g).numpy()]
        return order[: self.steps_per_epoch * self.cfg.batch_size] if self.drop_last else order

    def _targets(self, rows: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(np.asarray(self.manifest.labels)[rows.numpy()])
        return (y.float() if self.task == "multilabel" else y.long()).to(self.device)

    def train_epoch(self, epoch: int, last_val: float | None = None, partial: dict[str, Any] | None = None,
                    on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """One epoch; ``partial`` continues it after ``partial["step"]`` batches (a mid-epoch checkpoint),
        ``on_step`` is called with the epoch's partial state every ``checkpoint_every`` batches."""
        from featpipe.progress import progress_bar

        c = self.cfg
        eseed = _epoch_seed(c.seed, epoch)
        if partial is None:
            _seed_all(eseed)  # dropout; a mid-epoch resume restored the RNG state saved with ``partial``
            partial = {"step": 0, "seen": 0, "loss_sum": 0.0, "seconds": 0.0, "logits": [], "rows": []}
        set_train_mode(self.net, self.prefixes, self.cfg.bn or "train")
        start = int(partial["step"]) * c.batch_size
        loader = self._loader(self.epoch_order(epoch)[start:], self.transforms["train"], epoch=epoch, seed=eseed,
                              offset=start)
        bar = progress_bar(self.steps_per_epoch * c.batch_size, f"epoch {epoch}/{c.epochs}", enabled=self.progress,
                           initial=start, leave=False)
        t0, step, seen, loss_sum = time.perf_counter(), int(partial["step"]), int(partial["seen"]), partial["loss_sum"]
        logits_all = [np.asarray(z) for z in partial["logits"]]  # tensors in a checkpoint
        rows_all = [np.asarray(r) for r in partial["rows"]]
        for x, rows, bad in loader:
            self.failed.update({int(r): e for r, e in bad})
            step += 1
            if x is None:
                continue
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = self._targets(rows)
            with autocast(c.precision, self.device):
                logits = self.net(x)
            loss = self.criterion(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
            else:
                loss.backward()
            if c.clip_grad:
                nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], c.clip_grad)
            if self.scaler is not None:
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                self.opt.step()
            self.sched.step()
            seen += len(rows)
            loss_sum += float(loss.detach()) * len(rows)
            logits_all.append(logits.detach().float().cpu().numpy())
            rows_all.append(rows.numpy())
            rate = (seen - int(partial["seen"])) / max(time.perf_counter() - t0, 1e-9)
            bar.update(len(rows))
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", img_s=f"{rate:.1f}",
                            **({f"val_{self.metric}": f"{last_val:.4f}"} if last_val is not None else {}))
            if on_step and c.checkpoint_every and step % c.checkpoint_every == 0 and step < self.steps_per_epoch:
                on_step({"step": step, "seen": seen, "loss_sum": loss_sum, "logits": logits_all, "rows": rows_all,
                         "seconds": float(partial["seconds"]) + time.perf_counter() - t0})
        bar.close()
        seconds = float(partial["seconds"]) + time.perf_counter() - t0
        if not seen:
            raise FinetuneError("no training image could be read")
        r = np.concatenate(rows_all)
        y = np.asarray(self.manifest.labels)[r]
        train_main = _score(y, _proba(np.concatenate(logits_all), self.task), self.task, self.classes,
                            self.metric)["main"]
        return {"train_loss": loss_sum / seen, "train_metric": train_main, "train_seconds": seconds,
                "images_per_second": seen / seconds if seconds > 0 else 0.0,
                "lr": [g["lr"] for g in self.opt.param_groups][-1]}

    @torch.no_grad()
    def logits(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode logits for ``rows`` (eval transform, never augmented) and which rows were readable."""
        self.net.eval()
        out = np.full((len(rows), len(self.classes)), np.nan, dtype=np.float32)
        pos = {int(r): i for i, r in enumerate(rows)}
        for x, good, bad in self._loader(rows, self.transforms["eval"]):
            self.failed.update({int(r): e for r, e in bad})
            if x is None:
                continue
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            with autocast(self.cfg.precision, self.device):
                z = self.net(x).float().cpu().numpy()
            out[[pos[int(r)] for r in good]] = z
        ok = ~np.isnan(out).any(axis=1)
        return out, ok

    def validate(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        rows = self.rows["val"]
        z, ok = self.logits(rows)
        y = np.asarray(self.manifest.labels)[rows]
        zt = torch.as_tensor(z[ok])
        yt = torch.as_tensor(y[ok]).float() if self.task == "multilabel" else torch.as_tensor(y[ok]).long()
        loss = float(self.eval_criterion(zt, yt)) if ok.any() else math.nan
        main = _score(y, _proba(z, self.task), self.task, self.classes, self.metric)["main"]
        return {"val_loss": loss, "val_metric": main, f"val_{self.metric}": main,
                "val_seconds": time.perf_counter() - t0}

    # ---------------------------------------------------------------------------- checkpoints
    def best_checkpoint(self, epoch: int, val: float) -> dict[str, Any]:
        base = self.spec.to_dict()
        base.pop("weights_path", None)
        return {
            "format": CHECKPOINT_FORMAT, "version": 1, "base_spec": base,
            "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.data_config.items()},
            "backbone_state": self.net.backbone.model.state_dict(),
            "head_state": self.net.fc.state_dict(), "feature_dim": int(self.feature_dim),
            "task": self.task, "classes": self.classes, "epoch": epoch, f"val_{self.metric}": float(val),
            "config": self.cfg.to_dict(), "seed": self.cfg.seed,
        }

    def state(self, epoch: int, history: dict[str, Any], best: dict[str, Any],
              partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a resume needs; ``epoch`` epochs are complete, ``partial`` is the next one's progress.
        Tensors and plain Python values only, so that it loads with ``torch.load(weights_only=True)``."""
        if partial is not None:
            partial = {**_plain({k: v for k, v in partial.items() if k not in ("logits", "rows")}),
                       "logits": [torch.from_numpy(np.asarray(z)) for z in partial["logits"]],
                       "rows": [torch.from_numpy(np.asarray(r)) for r in partial["rows"]]}
        return {
            "format": "featpipe-finetune-state", "epoch": epoch, "partial": partial,
            "config": _plain(self.cfg.to_dict()),
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": _plain(history), "best": _plain(best), "rng": _rng_state(),
            "failed": {str(k): str(v) for k, v in self.failed.items()},
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.net.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        _set_rng_state(st["rng"])
        self.failed = {int(k): v for k, v in st.get("failed", {}).items()}


# ------------------------------------------------------------------------------------ entry point


def finetune(manifest: Manifest, config: FinetuneConfig | None = None, out: str | Path = "runs/finetune", *,
             resume: bool = False, force: bool = False, progress: bool = True,
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune a backbone on ``manifest`` and write every artifact into ``out``.

    ``resume`` continues from ``out/last.pt`` (written at every epoch end, so a killed run loses at
    most the epoch in progress and ends exactly as an uninterrupted run on CPU).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out)
    last = out / LAST_CHECKPOINT
    saved = None
    if last.exists():
        if resume:
            saved = _read_state(last)
        elif not force:
            raise FinetuneError(f"{out} already holds a fine-tune run: pass --resume to continue it or --force "
                                "to start over")
    elif resume:
        log(f"nothing to resume in {out} (no {LAST_CHECKPOINT} yet): starting from the first epoch")
    cfg = config or FinetuneConfig()
    if saved is not None:
        stored = FinetuneConfig.from_dict(saved["config"])
        _check_same_config(stored, cfg)
        for k in _RUNTIME_FIELDS:
            setattr(stored, k, getattr(cfg, k))
        cfg = stored
    run = _Run(manifest, cfg, out, log, progress)
    if saved is not None and manifest.fingerprint() != saved["history"].get("dataset_fingerprint"):
        raise FinetuneError(f"{out} was trained on another dataset or split; resume needs the same data")
    writable_folder(out, "fine-tune output")
    if saved is None:
        for name in (BEST_CHECKPOINT, LAST_CHECKPOINT, "history.json", "metrics.json", "predictions.npz",
                     "model.joblib", "model.joblib.sha256"):
            (out / name).unlink(missing_ok=True)  # --force: nothing of the old run may pass for the new one
    run.build()
    c = run.cfg
    run.failed = {}
    if saved is None:
        lp = run.linear_probe() if c.recipe == "lp-ft" else None
        history: dict[str, Any] = {
            "epochs": [], "metric": run.metric, "task": run.task, "recipe": c.recipe, "config": c.to_dict(),
            "backbone": run.spec.to_dict(), "dataset": manifest.info(), "dataset_fingerprint": manifest.fingerprint(),
            "linear_probe": lp, "seed": c.seed, "device": run.device, "precision": c.precision,
            "threads": torch.get_num_threads(), "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "val_loss": math.inf, "bad_epochs": 0}
        start, partial = 1, None
    else:
        try:
            run.load_state(saved)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
            raise FinetuneError(f"{last} does not fit this run ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:100] if str(e) else ''}); pass --force to start over"
                                ) from None
        history, best = saved["history"], saved["best"]
        start = int(saved["epoch"]) + 1
        partial = saved.get("partial")
        where = f" and {partial['step']} steps of epoch {start}" if partial else ""
        log(f"resuming {out} after epoch {saved['epoch']}{where}")
    assert c.epochs is not None
    for epoch in range(start, c.epochs + 1):
        if best["bad_epochs"] >= c.patience:
            break
        last_val = history["epochs"][-1]["val_metric"] if history["epochs"] else None

        def checkpoint(p: dict[str, Any], epoch: int = epoch, best: dict[str, Any] = best) -> None:
            _atomic_save(run.state(epoch - 1, history, best, p), last)

        row = {"epoch": epoch, **run.train_epoch(epoch, last_val, partial, checkpoint), **run.validate()}
        partial = None
        score, vloss = row["val_metric"], row["val_loss"]
        better = score > best["score"] or (score == best["score"] and vloss < best["val_loss"])
        if better:
            best = {"epoch": epoch, "score": score, "val_loss": vloss, "bad_epochs": 0}
            _atomic_save(run.best_checkpoint(epoch, score), out / BEST_CHECKPOINT)
        else:
            best = {**best, "bad_epochs": best["bad_epochs"] + 1}
        row["best"] = better
        history["epochs"].append(row)
        history["best_epoch"] = best["epoch"]
        history["stopped_early"] = best["bad_epochs"] >= c.patience and epoch < c.epochs
        _atomic_save(run.state(epoch, history, best), last)
        _write_json(out / "history.json", history)
        log(f"epoch {epoch}/{c.epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val {run.metric} {score:.4f}{' *' if better else ''} ({row['train_seconds']:.1f}s, "
            f"{row['images_per_second']:.1f} img/s, val {row['val_seconds']:.1f}s)")
        if history["stopped_early"]:
            log(f"early stop: no val improvement for {c.patience} epochs; best epoch {best['epoch']}")
    history["train_seconds"] = float(sum(e["train_seconds"] + e["val_seconds"] for e in history["epochs"]))
    from featpipe.finetune._outputs import write_outputs

    metrics = write_outputs(run, history)
    history["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    _write_json(out / "history.json", history)
    failures = [(manifest.ids[r], e) for r, e in sorted(run.failed.items())]
    return FinetuneResult(out=out, metrics=metrics, history=history, best_epoch=int(best["epoch"]),
                          failures=failures)


_STATE_PARTS = {"epoch": int, "config": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                "history": dict, "best": dict, "rng": dict}


def _read_state(path: Path) -> dict[str, Any]:
    """``last.pt`` loaded with ``weights_only=True`` (tensors and plain values only: a crafted file runs
    no code) and checked for the parts a resume reads; any problem is one :class:`FinetuneError`."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise FinetuneError(f"cannot read {path}: not a PyTorch checkpoint (truncated or another format); "
                            "pass --force to start over")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FinetuneError(f"{path} holds objects other than tensors and plain values (written by another "
                            "program or an older featpipe, or crafted): not loaded; pass --force to start over"
                            ) from None
    except Exception as e:  # noqa: BLE001 - a truncated file is a bad checkpoint for the user
        raise FinetuneError(f"cannot read {path}: {str(e).splitlines()[0][:120]}; pass --force to start over") from None
    if not isinstance(st, dict) or st.get("format") != "featpipe-finetune-state":
        raise FinetuneError(f"{path} is not a featpipe fine-tune state; pass --force to start over")
    bad = [k for k, t in _STATE_PARTS.items() if not isinstance(st.get(k), t)]
    bad += [f"best.{k}" for k in ("epoch", "score", "val_loss", "bad_epochs") if k not in st.get("best", {})]
    if not isinstance(st.get("history", {}).get("epochs"), list):
        bad.append("history.epochs")
    if bad:
        raise FinetuneError(f"{path} is a malformed fine-tune state (missing or wrong: {', '.join(bad[:4])}); "
                            "pass --force to start over")
    return st


def _check_same_config(stored: FinetuneConfig, given: FinetuneConfig) -> None:
    """A resumed run keeps its recipe; options the user set to something else are an error."""
    default = FinetuneConfig()
    diff = []
    for k, v in given.to_dict().items():
        if k in _RUNTIME_FIELDS or v == getattr(default, k):
            continue  # not given (left at its default) or harmless
        if v != getattr(stored, k):
            diff.append(f"{k}: {getattr(stored, k)!r} -> {v!r}")
    if diff:
        raise FinetuneError(f"--resume continues the run as it was started; changed options: {'; '.join(diff[:4])}")
