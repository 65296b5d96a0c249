"""Keras VGG weights (.h5, e.g. keras-vggface's VGGFace) -> a torch state dict ``--weights`` loads.

Read with h5py, no TensorFlow: Keras 2 ``save_weights`` / ``model.save`` files, with keras-vggface's
layer names (``conv1_1``..``conv5_3``, ``fc6``..``fc8``) or Keras' own (``block1_conv1``.., ``fc1``,
``fc2``, ``predictions``). The output is torchvision's VGG layout plus the preprocessing the network
was trained with, which ``--weights`` then applies (and records in the cache key).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featpipe.backbones._weights import PREPROCESSING_KEY, map_state_dict
from featpipe.errors import BackboneError

# Mean pixel (B, G, R) subtracted from 0..255 BGR images by each family of Keras VGG weights.
MEAN_PIXEL_BGR: dict[str, tuple[float, float, float]] = {
    "vggface": (93.5940, 104.7624, 129.1863),  # keras-vggface preprocess_input, version 1 (VGG16)
    "caffe": (103.939, 116.779, 123.68),  # Keras applications' ImageNet VGG16/19 ("caffe" mode)
}
DENSE_NAMES = (("fc6", "fc1"), ("fc7", "fc2"), ("fc8", "predictions"))  # keras-vggface, Keras


def vgg_cfg(arch: str) -> list[Any]:
    """timm's VGG layer list (channel counts and ``"M"`` pools) for ``vgg11/13/16/19``."""
    from timm.models.vgg import cfgs

    if arch not in cfgs:
        raise BackboneError(f"unknown VGG architecture {arch!r}; expected one of {', '.join(sorted(cfgs))}")
    return list(cfgs[arch])


def preprocessing_for(trained_with: str) -> dict[str, Any]:
    """The preprocessing record of BGR, 0..255-minus-mean-pixel weights, expressed for timm's transforms.

    timm's Normalize computes (x - mean) / std on 0..1 RGB pixels, so mean = m / 255 and std = 1 / 255
    give x * 255 - m; ``mean`` is in RGB order and the channels are flipped to BGR afterwards.
    """
    if trained_with not in MEAN_PIXEL_BGR:
        raise BackboneError(f"unknown preprocessing {trained_with!r}; expected one of {', '.join(MEAN_PIXEL_BGR)}")
    blue, green, red = MEAN_PIXEL_BGR[trained_with]
    return {
        "mean": [red / 255, green / 255, blue / 255],
        "std": [1 / 255, 1 / 255, 1 / 255],
        "channel_order": "BGR",
        "input_size": [3, 224, 224],
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }


def _kind(dataset_name: str) -> str | None:
    base = dataset_name.rsplit("/", 1)[-1].split(":")[0]
    if base == "kernel" or base.endswith("_W"):
        return "kernel"
    if base == "bias" or base.endswith("_b"):
        return "bias"
    return None


def read_keras_layers(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Layer name -> {"kernel", "bias"} arrays of every layer that holds weights in a Keras 2 .h5 file."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BackboneError(f"cannot read Keras weights file {path}: not an HDF5 file ({str(e)[:80]})") from e
    layers: dict[str, dict[str, np.ndarray]] = {}
    with f:
        root = f["model_weights"] if "model_weights" in f else f  # model.save() vs save_weights()
        for name, group in root.items():
            if not isinstance(group, h5py.Group):
                continue
            found: dict[str, np.ndarray] = {}
            for sub in _datasets(group):
                kind = _kind(sub.name)
                if kind is None:
                    raise BackboneError(f"Keras weights file {path}: layer {name!r} holds {sub.name!r}, "
                                        "which is neither a kernel nor a bias")
                if kind in found:
                    raise BackboneError(f"Keras weights file {path}: layer {name!r} holds two {kind}s")
                found[kind] = np.asarray(sub[()], dtype=np.float32)
            if found:
                layers[name] = found
    return layers


def _datasets(group: Any) -> list[Any]:
    import h5py

    out: list[Any] = []
    group.visititems(lambda _n, obj: out.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return out


@dataclass
class KerasVgg:
    """A converted Keras VGG: torchvision-layout state dict and what the file held."""

    state_dict: dict[str, torch.Tensor]
    has_top: bool  # fc6/fc7 present (a full file), else convolutions only ("notop")
    n_classes: int | None  # fc8 width when present


def _pick(layers: dict[str, Any], names: tuple[str, ...], path: str | Path) -> str | None:
    present = [n for n in names if n in layers]
    if len(present) > 1:
        raise BackboneError(f"Keras weights file {path} has both {present[0]!r} and {present[1]!r}")
    return present[0] if present else None


def _weights(layers: dict[str, Any], name: str, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    got = layers[name]
    if set(got) != {"kernel", "bias"}:
        raise BackboneError(f"Keras weights file {path}: layer {name!r} lacks a kernel or a bias")
    return got["kernel"], got["bias"]


def keras_vgg_state_dict(path: str | Path, arch: str = "vgg16") -> KerasVgg:
    """Keras VGG weights -> torchvision VGG layout (``features.N.*``, ``classifier.{0,3,6}.*``).

    The block structure comes from ``arch``, channel widths from the file. Conv kernels go from
    Keras' (H, W, in, out) to torch's (out, in, H, W), dense kernels from (in, out) to (out, in), and
    fc6's input from Keras' NHWC flatten order to torch's NCHW.
    """
    layers = read_keras_layers(path)
    sd: dict[str, torch.Tensor] = {}
    used: list[str] = []
    idx, block, conv, channels = 0, 1, 0, 3
    for v in vgg_cfg(arch):
        if v == "M":
            idx, block, conv = idx + 1, block + 1, 0
            continue
        conv += 1
        names = (f"conv{block}_{conv}", f"block{block}_conv{conv}")
        name = _pick(layers, names, path)
        if name is None:
            found = ", ".join(list(layers)[:6]) or "none"
            raise BackboneError(f"Keras weights file {path} has no layer {names[0]!r} or {names[1]!r} of a "
                                f"{arch} (layers with weights: {found})")
        kernel, bias = _weights(layers, name, path)
        if kernel.ndim != 4 or kernel.shape[:3] != (3, 3, channels) or bias.shape != kernel.shape[3:]:
            raise BackboneError(f"Keras weights file {path}: {name} kernel has shape {kernel.shape}, expected "
                                f"(3, 3, {channels}, out) (TensorFlow order) and a bias per output")
        sd[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        sd[f"features.{idx}.bias"] = torch.from_numpy(bias.copy())
        used.append(name)
        idx, channels = idx + 2, kernel.shape[3]

    dense = [_pick(layers, names, path) for names in DENSE_NAMES]
    has_top = dense[0] is not None
    if has_top:
        if dense[1] is None:
            raise BackboneError(f"Keras weights file {path} has {dense[0]!r} but no fc7 / fc2 layer")
        kernel, bias = _weights(layers, dense[0], path)
        side = math.isqrt(kernel.shape[0] // channels) if kernel.ndim == 2 else 0
        if kernel.ndim != 2 or side * side * channels != kernel.shape[0] or bias.shape != kernel.shape[1:]:
            raise BackboneError(f"Keras weights file {path}: {dense[0]} kernel has shape {kernel.shape}, "
                                f"expected (H * W * {channels}, out) after the last pool")
        out = kernel.shape[1]
        nchw = kernel.reshape(side, side, channels, out).transpose(3, 2, 0, 1).reshape(out, -1)
        sd["classifier.0.weight"] = torch.from_numpy(np.ascontiguousarray(nchw))
        sd["classifier.0.bias"] = torch.from_numpy(bias.copy())
        used.append(dense[0])
        for name, index in ((dense[1], 3), (dense[2], 6)):
            if name is None:
                continue
            kernel, bias = _weights(layers, name, path)
            if kernel.ndim != 2 or kernel.shape[0] != out or bias.shape != kernel.shape[1:]:
                raise BackboneError(f"Keras weights file {path}: {name} kernel has shape {kernel.shape}, "
                                    f"expected ({out}, out)")
            sd[f"classifier.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
            sd[f"classifier.{index}.bias"] = torch.from_numpy(bias.copy())
            used.append(name)
            out = kernel.shape[1]
    leftover = [n for n in layers if n not in used]
    if leftover:
        raise BackboneError(f"Keras weights file {path} has layers a plain {arch} does not: {', '.join(leftover[:6])}")
    n_classes = int(sd["classifier.6.weight"].shape[0]) if "classifier.6.weight" in sd else None
    return KerasVgg(sd, has_top, n_classes)


def check_fits(sd: dict[str, torch.Tensor], arch: str, *, has_top: bool, source: str) -> None:
    """Refuse a conversion that ``--weights`` would refuse: map it onto timm's ``arch`` (shapes only)."""
    import timm

    with torch.device("meta"):  # shapes without allocating or initialising the weights
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    optional = set() if has_top else {k for k in model.state_dict() if k.startswith("pre_logits.")}
    map_state_dict(sd, model, arch=arch, source=source, optional=optional)


def convert_keras_vgg(
    src: str | Path, out: str | Path, *, arch: str = "vgg16", trained_with: str = "vggface"
) -> KerasVgg:
    """Write ``out``: the torch state dict of Keras VGG weights ``src`` plus their preprocessing."""
    from featpipe.checksum import file_id

    pre = preprocessing_for(trained_with)
    converted = keras_vgg_state_dict(src, arch)
    check_fits(converted.state_dict, arch, has_top=converted.has_top, source=str(src))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save({
        "state_dict": converted.state_dict,
        PREPROCESSING_KEY: pre,
        "featpipe_source": {"file": Path(src).name, "id": file_id(src), "format": "keras-h5", "arch": arch,
                            "trained_with": trained_with},
    }, tmp)
    os.replace(tmp, out)  # never a half-written weights file under the final name
    return converted
