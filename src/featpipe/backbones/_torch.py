"""timm backbones: pooled features from the model head or from a cut at an intermediate layer."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from featpipe.backbones._base import Backbone, BackboneSpec
from featpipe.errors import BackboneError


class _StopForward(Exception):
    """Raised by the layer hook: nothing after the cut needs computing."""


def vgg_layer_aliases(model: nn.Module) -> dict[str, str]:
    """Keras-style VGG cut names (``block4_pool``) -> module names (``features.23``)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return {}
    out: dict[str, str] = {}
    block, conv = 1, 0
    for idx, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            conv += 1
            out[f"block{block}_conv{conv}"] = f"features.{idx}"
        elif isinstance(layer, nn.MaxPool2d):
            out[f"block{block}_pool"] = f"features.{idx}"
            block, conv = block + 1, 0
    return out


def pool_features(out: Any) -> torch.Tensor:
    """Global-average-pool whatever a layer returns into (B, D)."""
    if isinstance(out, (list, tuple)):
        out = out[0]
    if out.ndim == 4:  # (B, C, H, W)
        return out.float().mean(dim=(2, 3))
    if out.ndim == 3:  # (B, tokens, C) transformer blocks
        return out.float().mean(dim=1)
    return out.float().flatten(1)


class BackboneNet(nn.Module):
    """The trainable form of a torch backbone: images ``(B, 3, H, W)`` -> pooled features ``(B, D)``.

    ``layer`` cuts the network at any module name or VGG Keras name (``block4_pool`` = that pool's
    output): the module's output is average-pooled and nothing after it is computed. ``embed`` runs
    this module frozen, ``finetune`` trains it, so a cut means the same network in both stages.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, arch: str = "", name: str = "") -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.cut = resolve_layer(model, layer, arch, name) if layer else None
        self._captured: torch.Tensor | None = None
        if self.cut is not None:
            # the forward stops by raising from the hook: no layer after the cut is computed
            dict(model.named_modules())[self.cut].register_forward_hook(self._capture)

    def _capture(self, _module: nn.Module, _inp: Any, out: Any) -> None:
        self._captured = pool_features(out)
        raise _StopForward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut is None:
            return pool_features(self.model(x))
        self._captured = None
        try:
            self.model(x)
        except _StopForward:
            pass
        out, self._captured = self._captured, None
        if out is None:
            raise BackboneError(f"layer {self.layer!r} was never reached in the forward pass")
        return out

    def stages(self) -> list[tuple[str, list[str]]]:
        """Trainable stages in forward order (``--unfreeze last-N``): ``(name, module names)``."""
        return backbone_stages(self.model, self.cut)


def resolve_layer(model: nn.Module, layer: str, arch: str = "", name: str = "") -> str:
    """``--layer`` (module name or VGG Keras name) -> module name; one-line error when unknown."""
    modules = dict(model.named_modules())
    module = vgg_layer_aliases(model).get(layer, layer)
    if module not in modules or module == "":
        hint = ", ".join(list(vgg_layer_aliases(model))[-5:] or list_layer_names(model)[:8])
        raise BackboneError(
            f"layer {layer!r} not found in {arch or type(model).__name__}; try one of: {hint} "
            f"(all: featpipe backbones --layers {name or arch})"
        )
    return module


MAIN_SEQUENCES = ("blocks", "stages", "layers", "features")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def backbone_stages(model: nn.Module, cut: str | None = None) -> list[tuple[str, list[str]]]:
    """Stages of a network in forward order: its top-level children with parameters (a norm layer joins
    the stage before it), the main block sequence (``blocks``, ``stages``, ``layers``, ``features``)
    expanded into its elements; stages after a ``cut`` are dropped (they are never run)."""
    out: list[tuple[str, list[str]]] = []
    for n, m in model.named_children():
        if not any(True for _ in m.parameters()):
            continue
        if n in MAIN_SEQUENCES and isinstance(m, nn.Sequential):
            out += [(f"{n}.{k}", [f"{n}.{k}"]) for k, sub in m.named_children()
                    if any(True for _ in sub.parameters())]
        elif isinstance(m, _NORMS) and out:
            out[-1][1].append(n)
        else:
            out.append((n, [n]))
    if cut is not None:  # a stage starting after the cut module (in forward order) is never run
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        out = [(name, mods) for name, mods in out if order[mods[0]] <= order[cut]]
    return out


class TorchBackbone(Backbone):
    """A frozen :class:`BackboneNet` run under ``inference_mode`` with channels_last and optional autocast.

    ``fold`` (default) folds its eval-mode BatchNorms into the convolutions before them and, on CPU,
    fuses each convolution with the ReLU/ReLU6 after it for bf16; pass ``fold=False`` for a net that is
    going to be trained (its ``net`` is then the model as built).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        data_config: dict[str, Any],
        device: str,
        *,
        fold: bool = True,
    ) -> None:
        from timm.data import create_transform

        from featpipe.backbones._fold import fold_batchnorm, fuse_conv_activation

        data_config = dict(data_config)
        channel_order = data_config.pop("channel_order", "RGB")  # BGR: flipped after timm's transform
        preprocessing = {
            "input_size": list(data_config["input_size"]),
            "interpolation": data_config["interpolation"],
            "mean": [float(v) for v in data_config["mean"]],
            "std": [float(v) for v in data_config["std"]],
            "crop_pct": float(data_config["crop_pct"]),
            "crop_mode": data_config.get("crop_mode", "center"),
        }
        if channel_order != "RGB":  # recorded only when set, so RGB cache keys stay as they were
            preprocessing["channel_order"] = channel_order
        super().__init__(spec, preprocessing, device)
        self.data_config = data_config
        # built from the values given (a bundle's recorded ones, or the model's resolved defaults)
        self._transform = create_transform(**data_config, is_training=False)
        self._bgr = channel_order == "BGR"
        self.geometry, self.tensor_geometry, self._scale, self._shift = uint8_split(
            self._transform, preprocessing, device)
        net = model if isinstance(model, BackboneNet) else BackboneNet(model, spec.layer, spec.arch, spec.name)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        # frozen BatchNorms fold into their convolutions (same features; lite0 on CPU ~1.2x bf16, ~1.25x fp32);
        # a trainable net (fine-tune, its stage list) keeps them
        self.folded_bn = fold_batchnorm(net.model) if fold else 0
        # and on CPU each conv + ReLU/ReLU6 runs as one oneDNN conv under bf16 (same bits; lite0 ~1.1-1.15x)
        self.fused_act = fuse_conv_activation(net.model) if fold and str(device).startswith("cpu") else 0
        self.net = net.to(device).to(memory_format=torch.channels_last)
        self.model = self.net.model
        size = preprocessing["input_size"]
        self.feature_dim = int(self.forward(torch.zeros(1, *size)).shape[1])

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        x = self._transform(img)
        return x.flip(0) if self._bgr else x

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.spec.precision, self.device)

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """Features of a float (B, C, H, W) batch from :meth:`preprocess`, or of a uint8 (B, H, W, C)
        batch from :attr:`geometry` (normalised here, on the device: 4x less to copy than floats)."""
        x = batch.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            if self._scale is None:
                raise BackboneError(f"{self.spec.tag()} takes float batches only (its preprocessing is not "
                                    "resize/crop + normalise)")
            # (B, H, W, C) permuted is already channels_last; one fused multiply-add normalises it
            # (the uint8 -> float conversion first: mixed-dtype addcmul is 2.6x slower on CPU, same values)
            x = torch.addcmul(self._shift, x.permute(0, 3, 1, 2).float(), self._scale)
            if self._bgr:  # as preprocess(): normalised in RGB order, then the channels flipped
                x = x.flip(1)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            out = self.net(x)
        return out.float().cpu().numpy()


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``fp32`` (none), ``bf16`` or ``fp16`` on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    dev = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(dev, dtype=dtype)


def uint8_split(transform: Any, pre: dict[str, Any], device: str) -> tuple[Any, Any, Any, Any]:
    """Split timm's eval transform into its PIL part (resize, crop: ``geometry``, giving uint8 HWC
    images), the same part on uint8 (N, C, H, W) tensors on any device (``tensor_geometry``, equal
    pixel for pixel; None where it has no exact tensor form) and ``x * scale + shift`` equal to its
    ToTensor + Normalize, applied per batch in :meth:`TorchBackbone.forward`. All None when the
    transform is anything else."""
    steps = list(getattr(transform, "transforms", []))
    names = [type(t).__name__ for t in steps[-2:]]
    if len(steps) < 2 or names[0] not in ("ToTensor", "MaybeToTensor") or names[1] != "Normalize":
        return None, None, None, None
    mean = torch.tensor([float(v) for v in steps[-1].mean])
    std = torch.tensor([float(v) for v in steps[-1].std])
    if not (torch.allclose(mean, torch.tensor(pre["mean"])) and torch.allclose(std, torch.tensor(pre["std"]))):
        return None, None, None, None
    from torchvision import transforms as T

    from featpipe.backbones._resample import tensor_geometry

    def geometry(img: Image.Image) -> np.ndarray:
        return np.asarray(pil_steps(img), dtype=np.uint8)

    pil_steps = T.Compose(steps[:-2])
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
    shift = (-mean / std).view(1, 3, 1, 1).to(device)
    return geometry, tensor_geometry(steps[:-2]), scale, shift


def list_layer_names(model: nn.Module, max_depth: int = 2) -> list[str]:
    """Module names a user can cut at (up to ``max_depth`` dots deep)."""
    return [n for n, _ in model.named_modules() if n and n.count(".") < max_depth]
