"""`backbones[]:` one backbone's section, and the one place it becomes a :class:`BackboneSpec`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from featpipe.backbones._base import PRECISION_CHOICES
from featpipe.sections import Section, shorthand


class BackboneConfig(Section):
    """One entry of `backbones:` (a bare string is its name)."""

    _short = shorthand("name")
    name: str = Field(description="Registry name (`featpipe backbones`), any timm model name, or an .onnx file; "
                      "NAME@LAYER cuts it at LAYER.", json_schema_extra={"flag": "--backbone"})
    id: str | None = Field(None, description="Name that `fuse` uses for this entry (default: `name`).",
                           json_schema_extra={"cli": False})
    weights: str | None = Field(None, description="State-dict file for the architecture, timm or torchvision "
                                "layout (e.g. face weights for vgg16; Keras .h5: `featpipe convert-weights`). "
                                "In a pipeline: relative to the file.")
    pretrained: bool = Field(True, description="Pretrained weights; false (`--no-pretrained`): seeded random "
                             "init, a baseline.")
    layer: str | None = Field(None, description="Cut at this module (or VGG name like `block4_pool`) and "
                              "average-pool it.")
    image_size: int | None = Field(None, ge=8, description="Override the model's input size.")
    precision: Literal[*PRECISION_CHOICES] = Field(
        "auto", description="Autocast precision of the forward pass; `auto` = bf16 AMP on CUDA and on CPUs with "
        "native bf16 (AVX512-BF16/AMX), fp32 elsewhere. Part of the cache key.")
    batch_size: int | None = Field(None, gt=0, description="Embedding batch size for this backbone.",
                                   json_schema_extra={"cli": False})
    tta: Literal["hflip"] | None = Field(None, description="Test-time augmentation, `hflip`: cache the mean of "
                                         "the features of each image and its mirror (own cache key).")
    align: Literal["faces"] | None = Field(None, description="`faces`: detect the face (YuNet) and align it by 5 "
                                           "landmarks first; no face -> a failed row. Recorded in cache and bundle.")

    @model_validator(mode="after")
    def _weights_or_random(self) -> BackboneConfig:
        if self.weights and not self.pretrained:
            raise ValueError("'weights' and 'pretrained: false' contradict each other")
        return self

    @property
    def ref(self) -> str:
        return self.id or self.name

    def spec(self, *, seed: int = 0, device: str = "cpu", weights: str | None = None) -> Any:
        """The :class:`BackboneSpec` (what caches and bundles record) of this entry; ``weights``: the weights
        path as the caller resolved it (default ``self.weights``)."""
        from featpipe.backbones._registry import resolve_spec, split_layer

        name, layer = split_layer(self.name)  # NAME@LAYER is NAME cut at LAYER
        return resolve_spec(name, weights=weights or self.weights, pretrained=self.pretrained,
                            layer=self.layer or layer, image_size=self.image_size, precision=self.precision,
                            seed=seed, device=device, tta=self.tta, align=self.align)
