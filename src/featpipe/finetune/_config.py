"""The fine-tune recipe: every knob of a run, validated, with defaults that work untuned."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from featpipe.backbones import DEFAULT_BACKBONE, PRECISION_CHOICES
from featpipe.errors import FinetuneError
from featpipe.finetune._budget import MAX_BUDGET_EPOCHS, parse_duration
from featpipe.hardware import auto_precision
from featpipe.sections import Section

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


class FinetuneConfig(Section):
    """One fine-tune run: the `finetune` command's options and a pipeline's `finetune[]` entry. ``None``
    fields take a default that depends on the backbone or the data (resolved by :meth:`resolved`); the
    resolved config is recorded in every artifact."""

    backbone: str = Field(DEFAULT_BACKBONE, description="Registry name, timm model name, or `scratch-cnn` (a "
                          "small CNN from random init).")
    id: str | None = Field(None, exclude=True, description="Run name (default: the backbone name).",
                           json_schema_extra={"cli": False})
    weights: str | None = Field(None, description="Starting state-dict file for the architecture (in a "
                                "pipeline: relative to the file).")
    pretrained: bool = Field(True, description="Start from pretrained weights; false (`--no-pretrained`): from "
                             "a seeded random init.")
    layer: str | None = Field(None, description="Cut the backbone at this module (as in embed) and train up to it.")
    image_size: int | None = Field(None, ge=8, description="Input size. Default: 128 for small images (<= 64px) "
                                   "on pretrained nets, else the model's; scratch-cnn: the images' own size.")
    recipe: Literal[*RECIPES] | None = Field(None, description="`lp-ft`: linear probe on frozen features first, "
                                             "then end to end (default for pretrained); `ft`: end to end from the "
                                             "start.")
    unfreeze: str = Field("all", description="`head`, `last-N` or `all`: which backbone stages train (`featpipe "
                          "backbones --stages NAME`).")
    epochs: int | None = Field(None, gt=0, description="Most epochs (default 10; scratch-cnn 30; with a budget: "
                               "as many as fit; early stopping may end sooner).")
    budget: float | None = Field(None, description="Time budget, e.g. `30m`, `90s`, `1h` (recorded in seconds): "
                                 "the run measures its first steps, plans epochs and schedule to end within it "
                                 "(start-up, linear probe and final evaluation included), and stops early with "
                                 "the best epoch if the machine slows down.",
                                 json_schema_extra={"type": "text", "metavar": "DURATION"})
    batch_size: int | None = Field(None, gt=0, description="Training batch size (default: 128 for inputs <= "
                                   "64px, 64 up to 96px, else 32).")
    optimizer: Literal[*OPTIMIZERS] = Field("adamw", description="Optimiser.")
    lr: float | None = Field(None, gt=0, description="Head learning rate (default 1e-3; scratch-cnn 3e-3); the "
                             "backbone's is `lr x backbone_lr_mult`.")
    backbone_lr_mult: float | None = Field(None, ge=0, description="Backbone lr = lr x this (default 0.25; "
                                           "scratch-cnn 1).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(True, description="SGD Nesterov momentum.")
    weight_decay: float | None = Field(None, ge=0, description="Weight decay (default 0.05 with adamw, 5e-4 with "
                                       "sgd; never on biases and norm layers).")
    schedule: Literal[*SCHEDULES] = Field("cosine", description="Learning-rate schedule (after one warm-up).")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up epochs.")
    clip_grad: float | None = Field(1.0, ge=0, description="Gradient norm clip (0: off).")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Cross-entropy label smoothing (single-label "
                                   "tasks).")
    pos_weight: Literal["none", "auto"] = Field("none", description="Multi-label BCE: `auto` weights positives "
                                                "by negatives/positives per label (capped at 100).")
    class_weight: Literal["balanced"] | None = Field(None, description="`balanced`: weight classes by frequency.")
    metric: str | None = Field(None, description="Validation metric (early stopping); in a pipeline: `fit.metric`.",
                               json_schema_extra={"choices": "featpipe.heads.metrics:METRICS", "pipeline": False})
    augment: Literal[*AUGMENTS] = Field("light", description="Training-split augmentation preset; `hflip`, "
                                        "`scale`, `rotate`, `shift`, `color_jitter`, `grayscale` override single "
                                        "parts.")
    hflip: float | None = Field(None, ge=0, le=1, description="Horizontal flip probability.")
    scale: float | None = Field(None, gt=0, le=1, description="Min area of the random resized crop (zoom).")
    rotate: float | None = Field(None, ge=0, le=180, description="Max rotation in degrees.")
    shift: float | None = Field(None, ge=0, le=1, description="Max shift as a fraction of the size.")
    color_jitter: float | None = Field(None, ge=0, description="Brightness/contrast/saturation jitter.")
    grayscale: float | None = Field(None, ge=0, le=1, description="Random grayscale probability.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Dropout before the classifier (default 0; "
                                  "scratch-cnn 0.2).")
    bn: Literal["frozen", "train"] | None = Field(None, description="BatchNorm statistics: `frozen` (default for "
                                                  "pretrained weights: kept as the linear probe saw them) or "
                                                  "`train` (default from random init).")
    width: int = Field(32, gt=0, description="scratch-cnn: channels of the first block.")
    depth: int = Field(3, gt=0, description="scratch-cnn: number of double-conv blocks.")
    in_channels: Literal[1, 3] | None = Field(None, description="scratch-cnn: 1 = grayscale-native (default when "
                                              "every sampled image is gray, else 3).")
    checkpoint_every: int = Field(0, ge=0, description="Also save the resume state every N training steps (0: at "
                                  "epoch ends only).")
    patience: int | None = Field(None, gt=0, description="Early-stopping patience in epochs (default 3; "
                                 "scratch-cnn 6).")
    cross_fit: int = Field(0, ge=0, description="For the report's label check: instead of one model, fine-tune K "
                           "(>= 2), each without one K-th of the labelled images (every split), and keep their "
                           "probabilities of the images each left out (oof.npz); the budget is shared. 0: off.")
    seed: int = Field(0, ge=0, description="Seed of the run; in a pipeline: `seed`.",
                      json_schema_extra={"pipeline": False})
    precision: Literal[*PRECISION_CHOICES] = Field("auto", description="Autocast: `auto` = bf16 on CUDA and on "
                                                   "CPUs with native bf16 (AVX512-BF16/AMX), else fp32.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="`auto`, `cpu`, `cuda`, "
                        "`cuda:N`; in a pipeline: `device`.", json_schema_extra={"pipeline": False})
    num_workers: int | None = Field(None, ge=0, description="Image decode workers (default: by device).")
    decode_once: bool | None = Field(None, description="Decode the training images once into memory and augment "
                                     "whole batches in torch (default: when they fit in an eighth of the RAM and "
                                     "share one size).")
    cache_dir: str = Field("cache", description="Feature caches for the linear probe (an existing one at the "
                           "same input size is reused); in a pipeline: `cache_dir`.",
                           json_schema_extra={"pipeline": False})

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        try:
            return parse_duration(v)
        except FinetuneError as e:
            raise ValueError(str(e)) from None

    @field_validator("clip_grad")
    @classmethod
    def _clip_off(cls, v: float | None) -> float | None:
        return v or None  # 0 turns clipping off

    @field_validator("unfreeze")
    @classmethod
    def _unfreeze(cls, v: str) -> str:
        if v not in ("head", "all") and re.fullmatch(r"last-\d+", v) is None:
            raise ValueError(f"must be head, all or last-N, got {v!r}")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> FinetuneConfig:
        if self.scratch and self.recipe == "lp-ft":
            raise ValueError("scratch-cnn has nothing to probe: use recipe ft")
        if self.scratch and self.unfreeze != "all":
            raise ValueError("scratch-cnn trains from random init: unfreeze all")
        if self.weights and not self.pretrained:
            raise ValueError("'weights' and 'pretrained: false' contradict each other")
        if self.cross_fit == 1:
            raise ValueError("cross_fit needs at least 2 folds (0 turns it off)")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        if not d["cross_fit"]:  # recorded only when used: the runs' recorded configs (and so their
            del d["cross_fit"]  # up-to-date fingerprints and resume checks) are those of before it existed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.model_fields and k != "id"})

    @property
    def scratch(self) -> bool:
        return self.backbone.startswith("scratch-cnn")

    def resolved(self, native_size: int | None = None, model_size: int | None = None,
                 gray: bool = False) -> FinetuneConfig:
        """A copy with every ``None`` default filled in (``native_size``: typical image side of the data,
        ``model_size``: the backbone's default input side, ``gray``: every sampled image is gray)."""
        c = self.model_copy()
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
