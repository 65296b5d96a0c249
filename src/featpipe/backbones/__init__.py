"""Backbone registry: a name becomes a frozen feature extractor with its own preprocessing.

Public entry points: :func:`resolve_spec` (name + options -> serialisable spec) and
:func:`load_backbone` (spec -> :class:`Backbone`). The spec is what caches and model bundles
record, so the exact same backbone can be rebuilt later.
"""

from featpipe.backbones._base import Backbone, BackboneSpec
from featpipe.backbones._registry import (
    describe_backbones,
    list_layers,
    list_stages,
    load_backbone,
    resolve_spec,
    split_layer,
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "describe_backbones",
    "list_layers",
    "list_stages",
    "load_backbone",
    "resolve_spec",
    "split_layer",
]
