"""Backbone spec (what is recorded) and the loaded backbone (what runs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the modules that run a backbone, not by every CLI command
    import numpy as np
    import torch
    from PIL import Image

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may ask for: auto is resolved per machine
# fine-tune stage backbone names: a small CNN from random init, and the network a finetune run trained
SCRATCH = "scratch-cnn"
FINETUNED = "finetuned:"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild one frozen feature extractor, JSON-serialisable.

    ``weights`` says where the weights come from: ``package`` (an installed weights package),
    ``hub`` (timm / Hugging Face hub), ``file`` (``weights_path``), ``onnx`` (inside the ONNX
    file) or ``random`` (seeded random init, a baseline). ``weights_id`` identifies the exact
    weights (file hash or hub tag) and is part of the cache key.
    """

    name: str
    kind: str  # "timm" | "onnx"
    arch: str
    weights: str
    weights_id: str
    weights_path: str | None = None
    layer: str | None = None
    image_size: int | None = None
    precision: str = "fp32"
    seed: int = 0
    tta: str | None = None  # "hflip": features are the mean over the image and its mirror
    align: str | None = None  # "faces": detected, 5-point aligned face crops (featpipe.backbones._align)
    pool: str | None = None  # timm's global_pool ("token", "avg", "map"); None: the model's own default

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("tta", "align", "pool"):  # left out when unset, so older caches keep their keys
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def tag(self) -> str:
        """Short human-readable name used in file names and tables."""
        t = self.name
        if self.weights == "random":
            t += "-random"
        elif self.weights == "file":
            t += "-w" + self.weights_id.split(":")[-1][:6]
        if self.layer:
            t += "@" + self.layer
        if self.image_size:
            t += f"-{self.image_size}px"
        if self.precision != "fp32":
            t += "-" + self.precision
        if self.align:
            t += "-align" + self.align
        if self.tta:
            t += "-tta" + self.tta
        if self.pool:
            t += "-" + self.pool
        return t


class Backbone:
    """A loaded, frozen feature extractor: ``preprocess`` one image, ``forward`` a batch."""

    pooling = "avg"

    def __init__(self, spec: BackboneSpec, preprocessing: dict[str, Any], device: str) -> None:
        self.spec = spec
        self.preprocessing = preprocessing
        self.device = device
        self.feature_dim: int = 0

    def preprocess(self, img: Image.Image) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Everything that changes the features, for the cache key.

        The device is left out on purpose: CPU and GPU give the same features up to float noise,
        so a cache made on one is valid on the other. Precision is included.
        """
        spec = self.spec.to_dict()
        spec.pop("weights_path", None)  # the identity is weights_id, not where the file lies
        return {
            "backbone": spec,
            "preprocessing": self.preprocessing,
            "pooling": self.pooling,
            "feature_dim": self.feature_dim,
        }

    def key(self) -> str:
        return config_hash(self.config())


TTA_MODES = ("hflip",)
ALIGN_MODES = ("faces",)


def with_spec_options(backbone: Backbone) -> Backbone:
    """Wrap a loaded backbone's ``preprocess`` / ``forward`` with the spec's ``align`` and ``tta``."""
    spec = backbone.spec
    if spec.align == "faces":
        from featpipe.backbones._align import align_face

        plain_pre = backbone.preprocess
        backbone.preprocess = lambda img: plain_pre(align_face(img))  # type: ignore[method-assign]
        backbone.geometry = None  # the embed engine's shared uint8 resize would skip the alignment
        backbone.tensor_geometry = None
    if spec.tta == "hflip":
        plain = backbone.forward

        def forward(batch: torch.Tensor) -> np.ndarray:
            width = -1 if batch.dtype.is_floating_point else 2  # float (B, C, H, W) or uint8 (B, H, W, C)
            return (plain(batch) + plain(batch.flip(width))) / 2

        backbone.forward = forward  # type: ignore[method-assign]
    return backbone


def config_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
