"""State-dict files given with ``--weights``: read them and map their keys onto the timm architecture.

Keys are mapped by name through explicit per-layout tables (timm's own names, torchvision's VGG and
ResNet names), never by position: a file that does not fit is refused with a line naming the keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featpipe.errors import BackboneError

# A weights file may carry the preprocessing its network was trained with under this key
# (written by `featpipe convert-weights`); --weights then uses it instead of timm's defaults.
PREPROCESSING_KEY = "featpipe_preprocessing"
PREPROCESSING_FIELDS = ("mean", "std", "channel_order", "interpolation", "crop_pct", "input_size")


@dataclass(frozen=True)
class KeyRule:
    """One row of a key map: a file key (regex, full match) -> timm key, or dropped."""

    pattern: str
    target: str | None  # template with \\1.. groups; None: a classifier layer the feature extractor lacks
    reshape: bool = False  # same numbers in another shape (torchvision Linear -> timm 1x1 / 7x7 Conv2d)


_BN_OR_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

TORCHVISION_VGG = (
    KeyRule(rf"features\.(\d+)\.{_BN_OR_PARAM}", r"features.\1.\2"),
    KeyRule(r"classifier\.0\.(weight|bias)", r"pre_logits.fc1.\1", reshape=True),  # fc6
    KeyRule(r"classifier\.3\.(weight|bias)", r"pre_logits.fc2.\1", reshape=True),  # fc7
    KeyRule(r"classifier\.6\.(weight|bias)", None),  # fc8: the class logits
)
TORCHVISION_RESNET = (
    KeyRule(rf"(conv1|bn1)\.{_BN_OR_PARAM}", r"\1.\2"),
    KeyRule(rf"(layer[1-4]\.\d+\.(?:conv|bn)[1-3])\.{_BN_OR_PARAM}", r"\1.\2"),
    KeyRule(rf"(layer[1-4]\.0\.downsample\.[01])\.{_BN_OR_PARAM}", r"\1.\2"),
    KeyRule(r"fc\.(weight|bias)", None),
)


def _timm_rules(model: nn.Module) -> tuple[KeyRule, ...]:
    """timm's own names; the classifier named in the model's pretrained config is dropped."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return tuple(KeyRule(re.escape(h) + r"\.(weight|bias)", None) for h in heads) + (KeyRule(r"(.+)", r"\1"),)


def layouts_for(model: nn.Module) -> dict[str, tuple[KeyRule, ...]]:
    """The key maps tried, in order, for this architecture."""
    from timm.models.resnet import ResNet
    from timm.models.vgg import VGG

    out = {"timm": _timm_rules(model)}
    if isinstance(model, VGG):
        out["torchvision"] = TORCHVISION_VGG
    elif isinstance(model, ResNet):
        out["torchvision"] = TORCHVISION_RESNET
    return out


@dataclass
class _Mapping:
    layout: str
    state_dict: dict[str, torch.Tensor]
    unmatched: list[str]  # file keys no rule (or no target tensor) takes
    missing: list[str]  # model tensors no file key fills
    bad_shape: list[str]

    @property
    def n_problems(self) -> int:
        return len(self.unmatched) + len(self.missing) + len(self.bad_shape)


def _apply(rules: tuple[KeyRule, ...], layout: str, sd: dict[str, torch.Tensor],
           target: dict[str, torch.Tensor], optional: set[str]) -> _Mapping:
    compiled = [(re.compile(r.pattern), r) for r in rules]
    out: dict[str, torch.Tensor] = {}
    unmatched, bad_shape = [], []
    for key, value in sd.items():
        rule, m = next(((r, m) for rx, r in compiled if (m := rx.fullmatch(key))), (None, None))
        if rule is None or m is None:
            unmatched.append(key)
            continue
        if rule.target is None:
            continue
        name = m.expand(rule.target)
        if name not in target or name in out:
            unmatched.append(key)
            continue
        want = target[name].shape
        if value.shape != want and not (rule.reshape and value.numel() == target[name].numel()):
            bad_shape.append(f"{key} {tuple(value.shape)} vs {name} {tuple(want)}")
            continue
        out[name] = value.reshape(want)
    missing = [k for k in target if k not in out and k not in optional]
    return _Mapping(layout, out, unmatched, missing, bad_shape)


def _listing(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def map_state_dict(
    sd: dict[str, torch.Tensor], model: nn.Module, *, arch: str, source: str, optional: set[str] = frozenset()
) -> tuple[dict[str, torch.Tensor], str]:
    """File state dict -> the model's own keys, by name. Returns (state dict, layout name).

    ``optional`` model keys may stay unfilled (layers after a ``--layer`` cut are never run).
    """
    target = model.state_dict()
    tried = [_apply(rules, name, sd, target, set(optional)) for name, rules in layouts_for(model).items()]
    for mapping in tried:
        if mapping.n_problems == 0:
            return mapping.state_dict, mapping.layout
    best = min(tried, key=lambda m: m.n_problems)
    parts = []
    if best.unmatched:
        parts.append(f"unmatched keys in the file: {_listing(best.unmatched)}")
    if best.bad_shape:
        parts.append(f"wrong shapes: {_listing(best.bad_shape, 3)}")
    if best.missing:
        parts.append(f"missing: {_listing(best.missing)}")
        if all(k.startswith("pre_logits.") for k in best.missing):
            parts.append("a convolutions-only file: cut inside the convolutions, e.g. --layer block5_pool")
    known = " or ".join(f"{n} layout" for n in layouts_for(model))
    raise BackboneError(
        f"weights in {source} do not fit {arch} ({known}; closest: {best.layout}): " + "; ".join(parts)
    )


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The name -> tensor dict inside a checkpoint (``state_dict`` / ``model`` wrappers, ``module.``)."""
    if isinstance(obj, dict):
        for k in ("state_dict", "model", "model_state_dict"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError("weights file does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, preprocessing recorded in the file or None); unreadable files -> one-line error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"cannot read weights file {path}: {str(e).splitlines()[0]}") from e
    pre = obj.get(PREPROCESSING_KEY) if isinstance(obj, dict) else None
    if pre is not None:
        if not isinstance(pre, dict) or set(pre) - set(PREPROCESSING_FIELDS) or pre.get("channel_order", "RGB") \
                not in ("RGB", "BGR"):
            raise BackboneError(f"weights file {path}: {PREPROCESSING_KEY} is not a valid preprocessing record")
        obj = {k: v for k, v in obj.items() if k != PREPROCESSING_KEY and k != "featpipe_source"}
    return unwrap_state_dict(obj), pre
