"""Backbone registry: a name becomes a frozen feature extractor with its own preprocessing.

Public entry points: :func:`resolve_spec` (name + options -> serialisable spec) and
:func:`load_backbone` (spec -> :class:`Backbone`). The spec is what caches and model bundles
record, so the exact same backbone can be rebuilt later. Names that need torch load on first use,
so the command line and a pipeline file's checks stay light.
"""


from featpipe.backbones._base import FINETUNED, PRECISION_CHOICES, Backbone, BackboneSpec, config_hash
from featpipe.backbones._presets import PRESETS, Preset
from featpipe.backbones._registry import (
    DEFAULT_BACKBONE,
    PACKAGED,
    PACKAGED_ONNX,
    describe_backbones,
    is_onnx,
    list_layers,
    list_stages,
    load_backbone,
    locate_weights,
    reachable,
    recorded_preprocessing,
    resolve_spec,
    split_layer,
    timm_arch,
    timm_has,
    weights_record,
    weights_unavailable,
)
from featpipe.lazy import lazy_attributes

# public name -> private module (these import torch)
_LAZY = {
    "BackboneNet": "_torch", "TorchBackbone": "_torch", "autocast": "_torch", "pool_features": "_torch",
    "uint8_split": "_torch", "BEST_CHECKPOINT": "_finetuned", "CHECKPOINT_FORMAT": "_finetuned",
    "read_checkpoint": "_finetuned", "scratch_arch": "_scratch", "convert_keras_vgg": "_convert",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "DEFAULT_BACKBONE", "FINETUNED", "PACKAGED", "PACKAGED_ONNX", "PRESETS", "Preset", "timm_arch", "PRECISION_CHOICES", "Backbone", "BackboneSpec",
    "config_hash", "describe_backbones", "is_onnx", "list_layers", "list_stages", "load_backbone", "locate_weights",
    "reachable", "recorded_preprocessing", "resolve_spec", "split_layer", "timm_has", "weights_record",
    "weights_unavailable", *_LAZY,
]
