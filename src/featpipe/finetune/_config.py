"""The fine-tune recipe: every knob of a run, validated, with defaults that work untuned."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from featpipe.backbones import DEFAULT_BACKBONE, PRECISION_CHOICES
from featpipe.errors import FinetuneError
from featpipe.finetune._budget import MAX_BUDGET_EPOCHS, parse_duration
from featpipe.hardware import auto_precision

RECIPES = ("lp-ft", "ft")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
AUGMENTS = ("none", "light", "strong")

# augmentation presets: (min crop area, rotation degrees, shift fraction, colour jitter, grayscale prob)
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "none": {"hflip": 0.0, "scale": 1.0, "rotate": 0.0, "shift": 0.0, "color_jitter": 0.0, "grayscale": 0.0},
    "light": {"hflip": 0.5, "scale": 0.6, "rotate": 0.0, "shift": 0.1, "color_jitter": 0.1, "grayscale": 0.0},
    "strong": {"hflip": 0.5, "scale": 0.35, "rotate": 15.0, "shift": 0.15, "color_jitter": 0.3,
               "grayscale": 0.1},
}


def default_batch_size(image_size: int | None) -> int:
    """Small inputs take bigger batches: a 48px step costs little, and per-step overhead would dominate."""
    side = image_size or 224
    return 128 if side <= 64 else 64 if side <= 96 else 32


@dataclass
class FinetuneConfig:
    """One fine-tune run. ``None`` fields take a default that depends on the backbone or the data
    (resolved by :meth:`resolved`); the resolved config is recorded in every artifact."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    pretrained: bool = True
    layer: str | None = None
    image_size: int | None = None  # None: 128 for small images (<= 64px) on pretrained nets, else the model's
    recipe: str | None = None  # lp-ft (pretrained) | ft (scratch-cnn, or to skip the linear probe)
    unfreeze: str = "all"  # head | last-N | all
    epochs: int | None = None  # 10 pretrained, 30 scratch-cnn; with a budget: the most the plan may use
    budget: float | str | None = None  # seconds (or "30m", "1h"): plan the run to end within it
    batch_size: int | None = None  # 128 for inputs <= 64px, 64 up to 96px, else 32
    optimizer: str = "adamw"
    lr: float | None = None  # head learning rate; 1e-3 pretrained, 3e-3 scratch
    backbone_lr_mult: float | None = None  # backbone lr = lr * this; 0.25 pretrained, 1 scratch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None  # 0.05 adamw, 5e-4 sgd (never on biases and norm layers)
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.1
    pos_weight: str = "none"  # multilabel BCE: none | auto (negatives / positives per label)
    class_weight: str | None = None  # None | balanced
    metric: str | None = None
    augment: str = "light"
    hflip: float | None = None
    scale: float | None = None  # min area of the random resized crop
    rotate: float | None = None
    shift: float | None = None
    color_jitter: float | None = None
    grayscale: float | None = None
    dropout: float | None = None  # before the classifier layer; 0 pretrained, 0.2 scratch
    bn: str | None = None  # frozen (pretrained: BatchNorm keeps its statistics) | train (random init)
    width: int = 32
    depth: int = 3
    in_channels: int | None = None  # scratch-cnn: 1 when the data is all grayscale, else 3
    checkpoint_every: int = 0  # also checkpoint every N training steps (0: at epoch ends only)
    patience: int | None = None  # epochs without val improvement: 3 pretrained, 6 scratch (noisier)
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    num_workers: int | None = None
    decode_once: bool | None = None  # None: when the decoded training images fit in memory
    cache_dir: str = "cache"

    def __post_init__(self) -> None:
        self.budget = parse_duration(self.budget)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def scratch(self) -> bool:
        return self.backbone.startswith("scratch-cnn")

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise FinetuneError(msg)

        need(self.recipe in (None, *RECIPES), f"unknown recipe {self.recipe!r}; expected lp-ft or ft")
        need(not (self.scratch and self.recipe == "lp-ft"), "scratch-cnn has nothing to probe: use --recipe ft")
        need(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; expected adamw or sgd")
        need(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; expected {', '.join(SCHEDULES)}")
        need(self.augment in AUGMENTS, f"unknown augment {self.augment!r}; expected none, light or strong")
        need(self.precision in PRECISION_CHOICES, f"unknown precision {self.precision!r}")
        need(self.pos_weight in ("none", "auto"), "--pos-weight must be none or auto")
        need(self.bn in (None, "frozen", "train"), "--bn must be frozen or train")
        need(self.class_weight in (None, "balanced"), "--class-weight must be none or balanced")
        need(self.unfreeze in ("head", "all") or re.fullmatch(r"last-\d+", self.unfreeze) is not None,
             f"--unfreeze must be head, all or last-N, got {self.unfreeze!r}")
        need(not (self.scratch and self.unfreeze != "all"), "scratch-cnn trains from random init: --unfreeze all")
        need(self.epochs is None or self.epochs >= 1, "--epochs must be >= 1")
        need(self.batch_size is None or self.batch_size >= 1, "--batch-size must be >= 1")
        need(self.in_channels in (None, 1, 3), "--in-channels must be 1 or 3")
        need(self.checkpoint_every >= 0, "--checkpoint-every must be >= 0")
        need(self.lr is None or self.lr > 0, "--lr must be > 0")
        need(self.patience is None or self.patience >= 1, "--patience must be >= 1")
        need(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)")
        need(self.image_size is None or self.image_size >= 8, "--image-size must be >= 8")
        need(self.dropout is None or 0 <= self.dropout < 1, "--dropout must be in [0, 1)")
        for k in ("hflip", "grayscale"):
            v = getattr(self, k)
            need(v is None or 0 <= v <= 1, f"--{k} must be a probability in [0, 1]")
        need(self.scale is None or 0 < self.scale <= 1, "--scale (min crop area) must be in (0, 1]")

    def resolved(self, native_size: int | None = None, model_size: int | None = None,
                 gray: bool = False) -> FinetuneConfig:
        """A copy with every ``None`` default filled in (``native_size``: typical image side of the data,
        ``model_size``: the backbone's default input side, ``gray``: every sampled image is gray)."""
        self.validate()
        c = dataclasses.replace(self)
        s = c.scratch
        c.recipe = c.recipe or ("ft" if s or not c.pretrained else "lp-ft")
        c.epochs = c.epochs or (MAX_BUDGET_EPOCHS if c.budget else 30 if s else 10)
        c.in_channels = c.in_channels or (1 if s and gray else 3)
        c.patience = c.patience or (6 if s else 3)
        c.lr = c.lr or (3e-3 if s else 1e-3)
        c.backbone_lr_mult = c.backbone_lr_mult if c.backbone_lr_mult is not None else (1.0 if s else 0.25)
        c.weight_decay = c.weight_decay if c.weight_decay is not None else (0.05 if c.optimizer == "adamw" else 5e-4)
        c.dropout = c.dropout if c.dropout is not None else (0.2 if s else 0.0)
        # pretrained BatchNorm statistics are kept (as the linear probe saw them): small batches of a new
        # domain would overwrite them in a few steps and undo the probe's head
        c.bn = c.bn or ("train" if s or not c.pretrained else "frozen")
        if c.image_size is None:
            if s:
                c.image_size = max(16, int(native_size or 32))
            elif native_size and native_size <= 64:
                c.image_size = min(128, model_size or 128)
            else:
                c.image_size = model_size
        c.batch_size = c.batch_size or default_batch_size(c.image_size)
        preset = AUGMENT_PRESETS[c.augment]
        for k, v in preset.items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if c.precision == "auto":
            c.precision = auto_precision(c.device)
        return c
