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

from featpipe.backbones import (
    BEST_CHECKPOINT,
    CHECKPOINT_FORMAT,
    FINETUNED,
    BackboneSpec,
    autocast,
    load_backbone,
    resolve_spec,
    scratch_arch,
)
from featpipe.data.manifest import Manifest
from featpipe.errors import FinetuneError
from featpipe.finetune._budget import (
    Clock,
    Estimates,
    LRPlan,
    StepTimer,
    budget_record,
    plan_epochs,
    warmup_steps,
)
from featpipe.finetune._config import FinetuneConfig
from featpipe.finetune._data import ImageRows, build_transforms, collate, probe_images
from featpipe.finetune._decoded import DecodedImages, TrainAugment, decode_rows, eval_batch, memory_budget
from featpipe.finetune._net import (
    ClassifierNet,
    freeze,
    init_from_linear_probe,
    param_groups,
    set_train_mode,
    trainable_prefixes,
)
from featpipe.folders import writable_folder
from featpipe.heads.metrics import DEFAULT_METRIC, evaluate, jsonable, main_metric_key

LAST_CHECKPOINT = "last.pt"
STATE_VERSION = 2  # 2: the learning-rate schedule is an LRPlan (a budget's plan can change its length)
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


def _batch_seed(epoch_seed: int, step: int) -> int:
    """Seed of one batch's augmentation on the decoded fast path (a function of the epoch and step)."""
    return (epoch_seed * 1_000_003 + step) % 2**63


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
    from featpipe.heads.thresholds import apply_thresholds

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
        from featpipe.features.embed import default_workers
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
        model_size = None if cfg.image_size is not None or cfg.scratch else _model_default_size(_base_spec(cfg, None))
        self.probe = probe_images(manifest, self.rows["train"])
        self.cfg = cfg.resolved(self.probe.side, model_size, gray=self.probe.gray)
        note = precision_note(self.cfg.precision, self.device, cfg.precision)
        if note:
            self.log(note)
        if cfg.scratch and cfg.in_channels is None and self.cfg.in_channels == 1:
            log("every sampled image is gray: scratch-cnn takes one input channel (--in-channels 3 to override)")
        self.metric = self.cfg.metric or DEFAULT_METRIC[self.task]
        main_metric_key(self.metric, self.task)  # an unknown metric fails before any training
        # DataLoader worker processes: on CPU one, augmenting beside the training step; a GPU gets embed's count
        auto_workers = default_workers(self.device) if self.device.startswith("cuda") else 1
        self.workers = auto_workers if self.cfg.num_workers is None else self.cfg.num_workers
        self.spec = _base_spec(self.cfg, self.cfg.image_size)
        self.clock: Clock | None = None
        self.failed: dict[int, str] = {}
        self.epoch, self.planned_epochs = 0, None  # the epoch in progress; a budget's planned count

    # ------------------------------------------------------------------------------- building
    def build(self) -> None:
        c = self.cfg
        _seed_all(c.seed)
        backbone = load_backbone(self.spec, self.device, trainable=True)
        self.data_config = dict(backbone.data_config)  # type: ignore[attr-defined]
        self.transforms = build_transforms(c, self.data_config)
        crop = float(self.data_config.get("crop_pct", 1.0)) or 1.0
        self.draft = int(math.ceil(max(self.data_config["input_size"][1:]) / crop))
        self._labels = np.asarray(self.manifest.labels)
        self.store, self.val_store = self._decode_once()
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

    def _scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """Warm-up + cosine / one-cycle / constant over ``epochs`` epochs (a budget's plan re-sets the
        length once it has measured the steps: :attr:`plan`)."""
        c = self.cfg
        assert c.epochs is not None
        total = c.epochs * self.steps_per_epoch
        self.plan = LRPlan(c.schedule, total, warmup_steps(c.warmup_epochs, self.steps_per_epoch, total,
                                                          budget=c.budget is not None))
        return torch.optim.lr_scheduler.LambdaLR(self.opt, self.plan)

    # ------------------------------------------------------------------------ decode-once fast path
    def _decode_once(self) -> tuple[DecodedImages | None, DecodedImages | None]:
        """Decode the training images once into a uint8 array (native size, never above the training
        size) and the validation images through the eval geometry, when both fit the memory budget
        (:func:`memory_budget`) and the sampled training images share one size."""
        from featpipe.backbones import uint8_split
        from featpipe.features.embed import default_workers

        c, probe = self.cfg, self.probe
        self._slot = self._val_slot = None
        if c.decode_once is False or probe.side is None:
            return None, None
        if probe.size is None and not c.decode_once:
            self.log("training images differ in size: decoding them per image and epoch")
            return None, None
        geometry, _, self._eval_scale, self._eval_shift = uint8_split(self.transforms["eval"], self.data_config,
                                                                       "cpu")
        oh, ow = (int(v) for v in self.data_config["input_size"][1:])
        w, h = probe.size or (ow, oh)
        k = min(1.0, max(oh, ow) / min(w, h))  # kept at native size, shrunk only above the training size
        size = (max(1, round(w * k)), max(1, round(h * k)))
        ch = 1 if probe.gray else 3
        n_tr, n_va = len(self.rows["train"]), len(self.rows["val"])
        need = n_tr * size[0] * size[1] * ch + (n_va * oh * ow * ch if geometry else 0)
        if c.decode_once is None and need > memory_budget():
            self.log(f"decoded training images would take {need / 2**20:.0f} MB (over the "
                     f"{memory_budget() / 2**20:.0f} MB budget): decoding them per image and epoch")
            return None, None
        t0 = time.perf_counter()
        workers = self.workers if c.num_workers is not None else default_workers(self.device)
        interp = str(self.data_config.get("interpolation", "bilinear"))
        store = decode_rows(self.manifest, self.rows["train"], size=size, interpolation=interp, workers=workers,
                            draft=self.draft)
        val = decode_rows(self.manifest, self.rows["val"], pil_part=geometry, workers=workers,
                          draft=self.draft) if geometry else None
        self._slot = store.index(len(self.manifest))
        self._val_slot = val.index(len(self.manifest)) if val is not None else None
        self.train_augment = TrainAugment(c, self.data_config, channels=1 if store.gray and c.in_channels == 1 else 3)
        mb = (store.data.nbytes + (val.data.nbytes if val is not None else 0)) / 2**20
        self.log(f"decoded {len(store.rows)} training images once ({size[0]}x{size[1]}"
                 f"{', gray' if store.gray else ''}{', ' + str(store.n_resized) + ' resized' if store.n_resized else ''}"
                 f") and {len(val.rows) if val is not None else 0} validation images, {mb:.0f} MB in "
                 f"{time.perf_counter() - t0:.1f}s; augmenting whole batches in torch")
        return store, val

    # ------------------------------------------------------------------------------ linear probe
    def linear_probe(self) -> dict[str, Any]:
        """Fit featpipe's logistic head (C tuned on val) on frozen features of the same input size,
        reusing or filling the feature cache, and start the classifier layer from it. Inside a time
        budget a cache that would need embedding is not filled: the probe takes the validation images
        and as many training images (in random order) as a fifth of the time left allows."""
        from featpipe.features.cache import FeatureCache
        from featpipe.features.embed import embed_dataset
        from featpipe.heads import make_head

        t0 = time.perf_counter()
        lp_spec = resolve_spec(self.cfg.backbone, weights=self.cfg.weights, pretrained=self.cfg.pretrained,
                               layer=self.cfg.layer, image_size=self.cfg.image_size, precision="auto",
                               seed=self.cfg.seed, device=self.device)
        info: dict[str, Any]
        if self.clock is not None and not self._complete_cache(lp_spec):
            Xtr, Ytr, Xva, Yva, n_all = self._probe_features(0.2 * self.clock.left())
            info = {"cache": None, "cache_reused": False, "train_images": len(Xtr), "of_train_images": n_all}
        else:
            res = embed_dataset(self.manifest, lp_spec, cache_dir=self.cfg.cache_dir, device=self.device,
                                progress=self.progress, seed=self.cfg.seed)
            cache = FeatureCache.open(res.path)
            tr, va = (np.asarray(cache.split_indices(s), dtype=np.int64) for s in ("train", "val"))
            X, Y = np.asarray(cache.features, dtype=np.float64), np.asarray(cache.labels)
            Xtr, Ytr, Xva, Yva = X[tr], Y[tr], X[va], Y[va]
            info = {"cache": str(res.path), "cache_reused": res.n_computed == 0}
        head = make_head("logistic", task=self.task, preprocess="standardize", class_weight=self.cfg.class_weight,
                         metric=self.metric, seed=self.cfg.seed)
        kw = {} if self.task == "multilabel" else {"n_classes": len(self.classes)}
        head.fit(Xtr, Ytr, Xva, Yva, **kw)
        init_from_linear_probe(self.net.fc, head, self.task)
        val = _score(Yva, head.val_proba_, self.task, self.classes, self.metric)["main"]
        info = {**info, "params": head.params_, f"val_{self.metric}": val, "seconds": time.perf_counter() - t0}
        where = ("cache reused" if info["cache_reused"] else "cache filled") if info["cache"] else (
            f"{info['train_images']} of {info['of_train_images']} training images, inside the budget")
        self.log(f"linear probe: val {self.metric} {val:.4f} (C={head.params_.get('C', '-')}, "
                 f"{info['seconds']:.0f}s, {where})")
        return info

    def _complete_cache(self, spec: BackboneSpec) -> bool:
        """Whether ``cache_dir`` holds this dataset's features from this backbone with nothing left to embed."""
        from featpipe.errors import CacheError
        from featpipe.features.cache import find_cache, rows_to_embed

        try:
            path = find_cache(self.cfg.cache_dir, self.manifest, spec)
            return path is not None and rows_to_embed(path, self.manifest)[0] == 0
        except CacheError:
            return False

    @torch.no_grad()
    def _probe_features(self, seconds: float) -> tuple[np.ndarray, ...]:
        """Frozen pooled features of every validation image and of training images in a seeded random
        order until ``seconds`` have passed (at least two batches): (X_train, y_train, X_val, y_val, n_train)."""
        c = self.cfg
        assert c.batch_size is not None
        deadline = time.monotonic() + seconds
        backbone = self.net.backbone
        backbone.eval()

        def features(rows: np.ndarray, stop: bool) -> tuple[np.ndarray, np.ndarray]:
            feats, good_rows = [], []
            stored = not stop and self.val_store is not None and self._val_slot is not None
            batches = self._stored_batches(rows, self.val_store, self._val_slot, lambda u8, _k: eval_batch(
                u8, self._eval_scale, self._eval_shift)) if stored else self._loader(rows, self.transforms["eval"])
            for k, (x, good, bad) in enumerate(batches):
                self.failed.update({int(r): e for r, e in bad})
                if x is not None:
                    with autocast(c.precision, self.device):
                        f = backbone(x.to(self.device).contiguous(memory_format=torch.channels_last))
                    feats.append(f.float().cpu().numpy().astype(np.float64))
                    good_rows.append(good.numpy())
                if stop and k >= 1 and time.monotonic() > deadline:
                    break
            if not feats:
                raise FinetuneError("no image for the linear probe could be read")
            return np.concatenate(feats), np.concatenate(good_rows)

        Xva, va = features(self.rows["val"], stop=False)
        order = np.random.default_rng(c.seed).permutation(self.rows["train"])
        Xtr, tr = features(order, stop=True)
        return Xtr, self._labels[tr], Xva, self._labels[va], len(order)

    # -------------------------------------------------------------------------------- epochs
    def _loader(self, rows: np.ndarray, transform: Callable, shuffle: bool = False, epoch: int = 0,
                seed: int | None = None, offset: int = 0, workers: int | None = None) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.cfg.seed, epoch))  # worker seeds come from it, not the global RNG
        ds = ImageRows(self.manifest, rows, transform, self.draft, seed=seed, offset=offset)
        assert self.cfg.batch_size is not None
        n = self.workers if workers is None else workers
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=shuffle, generator=g, collate_fn=collate,
                          num_workers=n if len(rows) > self.cfg.batch_size else 0,
                          pin_memory=self.device.startswith("cuda"))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Train rows in this epoch's shuffled order (a function of seed and epoch; drop_last applied)."""
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.cfg.seed, epoch))
        order = self.rows["train"][torch.randperm(len(self.rows["train"]), generator=g).numpy()]
        return order[: self.steps_per_epoch * self.cfg.batch_size] if self.drop_last else order

    def _targets(self, rows: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(self._labels[rows.numpy()])
        return (y.float() if self.task == "multilabel" else y.long()).to(self.device)

    def _stored_batches(self, rows: np.ndarray, store: DecodedImages, slot: np.ndarray, make: Callable,
                        first: int = 0):
        """(batch, good rows, [(row, reason)] of unreadable ones) from a decoded store, as the loader gives."""
        bs = self.cfg.batch_size
        assert bs is not None
        for k in range(first, first + math.ceil(len(rows) / bs)):
            chunk = rows[(k - first) * bs:(k - first + 1) * bs]
            pos = slot[chunk]
            ok = pos >= 0
            bad = [(int(r), store.failed.get(int(r), "not decoded")) for r in chunk[~ok]]
            x = make(store.data[pos[ok]], k) if ok.any() else None
            yield x, torch.as_tensor(chunk[ok], dtype=torch.long), bad

    def _train_batches(self, epoch: int, start: int, eseed: int):
        """This epoch's training batches from step ``start`` on (decoded store or the per-image loader)."""
        bs = self.cfg.batch_size
        assert bs is not None
        order = self.epoch_order(epoch)[start * bs:]
        if self.store is None:
            return self._loader(order, self.transforms["train"], epoch=epoch, seed=eseed, offset=start * bs)

        def make(u8: np.ndarray, k: int) -> torch.Tensor:
            return self.train_augment(u8, torch.Generator().manual_seed(_batch_seed(eseed, k)))

        return self._stored_batches(order, self.store, self._slot, make, first=start)

    def train_epoch(self, epoch: int, last_val: float | None = None, partial: dict[str, Any] | None = None,
                    on_step: Callable[[dict[str, Any]], None] | None = None,
                    after_step: Callable[[float], bool] | None = None) -> dict[str, Any]:
        """One epoch; ``partial`` continues it after ``partial["step"]`` batches (a mid-epoch checkpoint),
        ``on_step`` is called with the epoch's partial state every ``checkpoint_every`` batches,
        ``after_step`` with each step's seconds (data included); it returns True to end the epoch there."""
        from featpipe.progress import progress_bar

        c = self.cfg
        eseed = _epoch_seed(c.seed, epoch)
        if partial is None:
            _seed_all(eseed)  # dropout; a mid-epoch resume restored the RNG state saved with ``partial``
            partial = {"step": 0, "seen": 0, "loss_sum": 0.0, "seconds": 0.0, "logits": [], "rows": []}
        set_train_mode(self.net, self.prefixes, self.cfg.bn or "train")
        assert c.batch_size is not None
        start = int(partial["step"]) * c.batch_size
        loader = self._train_batches(epoch, int(partial["step"]), eseed)
        bar = progress_bar(self.steps_per_epoch * c.batch_size, f"epoch {epoch}/{self.planned_epochs or c.epochs}",
                           enabled=self.progress, initial=start, leave=False)
        t0, step, seen, loss_sum = time.perf_counter(), int(partial["step"]), int(partial["seen"]), partial["loss_sum"]
        logits_all = [np.asarray(z) for z in partial["logits"]]  # tensors in a checkpoint
        rows_all = [np.asarray(r) for r in partial["rows"]]
        t_step, cut = time.perf_counter(), False
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
            now = time.perf_counter()
            if after_step is not None and after_step(now - t_step) and step < self.steps_per_epoch:
                cut = True
                break
            t_step = now
        bar.close()
        seconds = float(partial["seconds"]) + time.perf_counter() - t0
        row: dict[str, Any] = {"steps": step, "cut": cut}  # a cut comes after a trained step: seen > 0
        if not seen:
            raise FinetuneError("no training image could be read")
        r = np.concatenate(rows_all)
        train_main = _score(self._labels[r], _proba(np.concatenate(logits_all), self.task), self.task,
                            self.classes, self.metric)["main"]
        return {**row, "train_loss": loss_sum / seen, "train_metric": train_main, "train_seconds": seconds,
                "images_per_second": seen / seconds if seconds > 0 else 0.0,
                "lr": [g["lr"] for g in self.opt.param_groups][-1]}

    @torch.no_grad()
    def logits(self, rows: np.ndarray, per_image: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode logits for ``rows`` (eval transform, never augmented) and which rows were readable;
        decoded validation images come from their store unless ``per_image``."""
        self.net.eval()
        out = np.full((len(rows), len(self.classes)), np.nan, dtype=np.float32)
        pos = {int(r): i for i, r in enumerate(rows)}
        stored = (not per_image and self.val_store is not None and self._val_slot is not None
                  and bool(np.isin(rows, self.rows["val"]).all()))
        if stored:
            assert self.val_store is not None and self._val_slot is not None
            batches = self._stored_batches(np.asarray(rows), self.val_store, self._val_slot,
                                           lambda u8, _k: eval_batch(u8, self._eval_scale, self._eval_shift))
        else:
            batches = self._loader(rows, self.transforms["eval"], workers=None if not per_image else 0)
        for x, good, bad in batches:
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
        y = self._labels[rows]
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
            "format": "featpipe-finetune-state", "state_version": STATE_VERSION, "epoch": epoch, "partial": partial,
            "config": _plain(self.cfg.to_dict()), "elapsed": self.clock.elapsed() if self.clock else None,
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
             log: Callable[[str], None] | None = None, clock_start: float | None = None) -> FinetuneResult:
    """Fine-tune a backbone on ``manifest`` and write every artifact into ``out``.

    ``resume`` continues from ``out/last.pt`` (written at every epoch end, so a killed run loses at
    most the epoch in progress and ends exactly as an uninterrupted run on CPU). With a budget
    (``config.budget`` seconds) the run is planned to end, artifacts written, within it from
    ``clock_start`` (``time.monotonic()``; default: now); a resumed run has what its first part left.
    """
    t_enter = time.monotonic() if clock_start is None else clock_start
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
    if run.cfg.budget is not None:
        used = float(saved.get("elapsed") or 0.0) if saved is not None else 0.0
        run.clock = Clock(float(run.cfg.budget), start=t_enter - used)
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
            "in_channels_from": _in_channels_from(cfg, c), "decoded_once": run.store is not None,
            "budget": budget_record(run.clock),
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
    assert c.epochs is not None and c.patience is not None
    planner = _Planner(run, history["budget"]) if run.clock is not None else None
    epoch = start
    while epoch <= (planner.epochs if planner else c.epochs):
        if best["bad_epochs"] >= c.patience or (planner is not None and run.sched.last_epoch >= run.plan.total):
            break
        if planner is not None and history["epochs"] and planner.short():
            planner.deadline_stop(epoch)
            break
        last_val = history["epochs"][-1]["val_metric"] if history["epochs"] else None

        def checkpoint(p: dict[str, Any], epoch: int = epoch, best: dict[str, Any] = best) -> None:
            _atomic_save(run.state(epoch - 1, history, best, p), last)

        run.epoch = epoch
        row = {"epoch": epoch, **run.train_epoch(epoch, last_val, partial, checkpoint,
                                                 planner.after_step if planner else None), **run.validate()}
        partial = None
        t_save = time.perf_counter()
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
        if planner is not None:
            planner.epoch_end(epoch, row)
        planned = planner.epochs if planner else c.epochs
        history["stopped_early"] = best["bad_epochs"] >= c.patience and epoch < planned
        _atomic_save(run.state(epoch, history, best), last)
        _write_json(out / "history.json", history)
        if planner is not None:
            planner.save_seconds(time.perf_counter() - t_save)
        cut = f", cut at step {row['steps']}" if row["cut"] else ""
        log(f"epoch {epoch}/{planned}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val {run.metric} {score:.4f}{' *' if better else ''} ({row['train_seconds']:.1f}s{cut}, "
            f"{row['images_per_second']:.1f} img/s, val {row['val_seconds']:.1f}s)")
        if history["stopped_early"]:
            log(f"early stop: no val improvement for {c.patience} epochs; best epoch {best['epoch']}")
        if row["cut"]:
            break
        epoch += 1
    history["train_seconds"] = float(sum(e["train_seconds"] + e["val_seconds"] for e in history["epochs"]))
    from featpipe.finetune._outputs import write_outputs

    metrics = write_outputs(run, history)
    if run.clock is not None:
        history["budget"]["actual_seconds"] = run.clock.elapsed()
        log(f"budget {_fmt_seconds(run.clock.seconds)}: finished in {_fmt_seconds(run.clock.elapsed())} "
            f"(planned {_fmt_seconds(history['budget']['planned_seconds'] or 0.0)})")
    history["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    _write_json(out / "history.json", history)
    failures = [(manifest.ids[r], e) for r, e in sorted(run.failed.items())]
    return FinetuneResult(out=out, metrics=metrics, history=history, best_epoch=int(best["epoch"]),
                          failures=failures)


_STATE_PARTS = {"epoch": int, "config": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                "history": dict, "best": dict, "rng": dict}


def _in_channels_from(given: FinetuneConfig, resolved: FinetuneConfig) -> str | None:
    if not resolved.scratch:
        return None
    if given.in_channels is not None:
        return "option"
    return "data (every sampled image gray)" if resolved.in_channels == 1 else "default (colour images)"


def _fmt_seconds(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f}s"


class _Planner:
    """A run inside a time budget: measures the first steps and one evaluation, plans the epochs and
    the schedule's length to end (closing pass included) before the deadline, re-plans at epoch ends
    (longer or shorter, from the measured epoch), and ends an epoch early when the machine has slowed down so
    much that the rest would not fit. Its record is ``history["budget"]``."""

    CALIBRATION_STEPS = 5  # measured steps (after 2 warm-up steps) before the first plan

    def __init__(self, run: _Run, record: dict[str, Any]) -> None:
        assert run.clock is not None and run.cfg.epochs is not None
        self.run, self.clock, self.rec = run, run.clock, record
        self.timer = StepTimer()
        last = record["plans"][-1] if record["plans"] else None
        self.est = Estimates(last["step_seconds"], last["val_seconds"], last["final_seconds"],
                             last["save_seconds"]) if last else None
        self.epochs = int(record["planned_epochs"] or run.cfg.epochs)
        run.planned_epochs = record["planned_epochs"]
        self.n_steps, self.measured = 0, 0.0

    # --------------------------------------------------------------------------------- steps
    def after_step(self, seconds: float) -> bool:
        """Called after each training step; True ends the epoch here."""
        self.n_steps += 1
        if self.n_steps > 2:  # the first steps pay for allocations and worker start
            self.timer.add(seconds)
            self.measured += seconds
        if self.est is None:
            enough = (self.n_steps >= 2 + self.CALIBRATION_STEPS
                      and self.measured >= min(10.0, 0.02 * self.clock.seconds))
            if not ((enough or self.clock.elapsed() > 0.1 * self.clock.seconds) and self.timer.value is not None):
                return False
            self.plan("measured the first steps", grow=True)
        if self._steps_done() >= self.run.plan.total:
            return True  # the plan ends inside this epoch
        if self.short():
            self.deadline_stop(self.run.epoch)
            return True
        return False

    def _steps_done(self) -> int:
        return int(self.run.sched.last_epoch)

    def short(self) -> bool:
        """Whether one more step, a validation and the closing pass would overrun the deadline."""
        if self.est is None:
            return False
        typical = self.timer.value or self.est.step
        step = max(typical, self.timer.last or 0.0)  # the next step may be as slow as the last one
        slow = max(1.0, typical / max(self.est.step, 1e-9))  # evaluation slows down as training did
        return self.clock.left() < step + (self.est.val + self.est.final) * slow + self.est.save

    def deadline_stop(self, epoch: int) -> None:
        self.rec["stopped_at_deadline"] = True
        self.run.log(f"budget {_fmt_seconds(self.clock.seconds)}: no time left for more training steps; "
                     f"stopping in epoch {epoch} at {_fmt_seconds(self.clock.elapsed())} to keep the final "
                     f"evaluation inside the budget (the best epoch so far is kept)")

    # ------------------------------------------------------------------------------- planning
    def _measure_eval(self) -> tuple[float, float]:
        """(validation pass, closing pass) seconds from one timed evaluation of a few validation images:
        the closing pass embeds every split image by image with the best checkpoint."""
        run = self.run
        bs = run.cfg.batch_size or 32
        rows = run.rows["val"][: max(2 * bs, 64)]
        n_all = sum(len(run.rows[s]) for s in ("train", "val", "test"))
        run.logits(rows[:bs], per_image=True)  # untimed: the first eval batch pays one-time allocations
        t = time.perf_counter()
        run.logits(rows, per_image=True)
        per_image = (time.perf_counter() - t) / max(len(rows), 1)
        val = per_image * len(run.rows["val"])
        if run.val_store is not None:
            t = time.perf_counter()
            run.logits(rows)
            val = (time.perf_counter() - t) / max(len(rows), 1) * len(run.rows["val"])
        set_train_mode(run.net, run.prefixes, run.cfg.bn or "train")
        return val, 1.1 * per_image * n_all + 2.0

    def plan(self, why: str, grow: bool, epoch_step: float | None = None) -> None:
        run, c = self.run, self.run.cfg
        assert c.epochs is not None
        spe = run.steps_per_epoch
        if self.est is None:
            val, final = self._measure_eval()
            n_params = sum(p.numel() for p in run.net.parameters())
            # last.pt holds weights + two AdamW moments; best.pt the weights (at ~100 MB/s)
            self.est = Estimates(step=epoch_step or self.timer.value or 0.0, val=val, final=final,
                                 save=0.2 + 4 * 4 * n_params / 100e6)
        elif epoch_step is not None:
            self.est.step = epoch_step
        done = self._steps_done()
        epochs_done = run.epoch - 1 if done < run.epoch * spe else run.epoch
        epochs, total = plan_epochs(self.clock.left(), spe, done, self.est, c.epochs, epochs_done)
        before = run.plan.total
        if not grow:
            epochs, total = min(epochs, self.epochs), min(total, before)
        self.epochs = run.planned_epochs = epochs
        run.plan.total = total
        if done < run.plan.warm:  # still warming up: the warm-up fits the planned length
            run.plan.warm = max(warmup_steps(c.warmup_epochs, spe, total, budget=True), done)
        e = self.est
        rest = (total - done) * e.step + (epochs - epochs_done) * (e.val + e.save) + e.final
        planned = self.clock.elapsed() + rest
        self.rec["plans"].append({
            "why": why, "elapsed": self.clock.elapsed(), "epoch": run.epoch, "step": done, "epochs": epochs,
            "total_steps": total, "warmup_steps": run.plan.warm, "step_seconds": e.step, "val_seconds": e.val,
            "final_seconds": e.final, "save_seconds": e.save, "planned_seconds": planned,
        })
        self.rec["planned_epochs"], self.rec["planned_seconds"] = epochs, planned
        self.run.log(f"budget {_fmt_seconds(self.clock.seconds)}: {why}: {epochs} epochs of {spe} steps "
                     f"({total} steps at {e.step:.2f}s, validation {e.val:.1f}s, closing pass ~{e.final:.0f}s): "
                     f"done at ~{_fmt_seconds(planned)}")
        if total <= done < before:
            self.deadline_stop(run.epoch)  # not one more step fits where more were planned

    def epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """After an epoch's validation: the measured epoch replaces the estimates and the plan is
        re-made both ways: an epoch that ran faster than planned (the first steps pay for warm-up, or
        other load went away) gives its time back as more epochs, the cosine stretched over them."""
        if row["cut"]:
            return
        steps = max(int(row["steps"]), 1)
        step = row["train_seconds"] / steps
        if self.est is not None:
            self.est.val = row["val_seconds"]
        before = (self.epochs, self.run.plan.total)
        if self.est is None:
            self.plan("measured the first epoch", grow=True, epoch_step=step)
            return
        epochs, total = self._peek(step)
        if (epochs, total) != before:
            self.plan(f"re-planned after epoch {epoch}", grow=True, epoch_step=step)

    def _peek(self, step: float) -> tuple[int, int]:
        assert self.est is not None and self.run.cfg.epochs is not None
        est = Estimates(step, self.est.val, self.est.final, self.est.save)
        return plan_epochs(self.clock.left(), self.run.steps_per_epoch, self._steps_done(), est,
                           self.run.cfg.epochs, self.run.epoch)

    def save_seconds(self, seconds: float) -> None:
        if self.est is not None:
            self.est.save = seconds


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
    if st.get("state_version") != STATE_VERSION:
        raise FinetuneError(f"{path} was written by an older featpipe (another schedule format); pass --force "
                            "to start over")
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
