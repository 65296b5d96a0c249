"""``scratch-cnn``: a small conv net trained from random init, the row that shows what pretraining buys."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from featpipe.backbones._base import SCRATCH
from featpipe.errors import BackboneError

_ARCH = re.compile(r"^scratch-cnn(?:-w(\d+))?(?:-d(\d+))?(?:-c([13]))?$")
DEFAULTS = {"width": 32, "depth": 3, "in_channels": 3}


def scratch_arch(width: int = 32, depth: int = 3, in_channels: int = 3) -> str:
    """The recorded architecture name, e.g. ``scratch-cnn-w32-d3-c1``."""
    if width < 1 or depth < 1 or in_channels not in (1, 3):
        raise BackboneError(f"scratch-cnn needs width >= 1, depth >= 1 and 1 or 3 input channels, got "
                            f"width={width}, depth={depth}, in_channels={in_channels}")
    return f"{SCRATCH}-w{width}-d{depth}-c{in_channels}"


def parse_scratch_arch(name: str) -> dict[str, int]:
    """``scratch-cnn[-wW][-dD][-cC]`` -> ``{"width", "depth", "in_channels"}`` (defaults filled in)."""
    m = _ARCH.match(name)
    if not m:
        raise BackboneError(f"bad scratch-cnn name {name!r}; expected e.g. scratch-cnn or scratch-cnn-w32-d3-c1")
    out = dict(DEFAULTS)
    for key, val in zip(("width", "depth", "in_channels"), m.groups(), strict=True):
        if val is not None:
            out[key] = int(val)
    scratch_arch(**out)  # validates
    return out


def scratch_macs(width: int = 32, depth: int = 3, in_channels: int = 3, size: int = 48) -> int:
    """Multiply-adds of one forward pass over a ``size`` x ``size`` image (the convolutions: all but a
    few percent); a training step costs about three times that."""
    macs, c_in, side = 0, in_channels, size
    for i in range(depth):
        c = width * 2**i
        macs += side * side * 9 * (c_in * c + c * c)
        c_in = c
        side //= 2
    return macs


def scratch_description() -> str:
    """The `featpipe backbones` line: what scratch-cnn is and what its default costs."""
    d = DEFAULTS
    cost = ", ".join(f"{scratch_macs(d['width'], d['depth'], c, s) / 1e9:.2f} GMAC at {s}px{' gray' if c == 1 else ''}"
                     for c, s in ((3, 32), (1, 48)))
    return (f"small conv net trained from scratch by featpipe finetune (--width, --depth, --in-channels; default "
            f"w{d['width']}-d{d['depth']}: {cost} per image forward; trains ~160 img/s on 2 AVX2 cores at 48px gray, "
            f"an epoch of 20k images in about 2 min); finetuned:RUN embeds with a finetune run's backbone")


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ScratchCNN(nn.Module):
    """``depth`` blocks of two conv-BN-ReLU layers (``width * 2**i`` channels) with 2x2 max-pooling
    between blocks, then global average pooling. With ``in_channels=1`` RGB input is turned into
    luminance first, so the net is grayscale-native while sharing the RGB decode path."""

    def __init__(self, width: int = 32, depth: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c = width * 2**i
            layers = _conv_bn_relu(c_in, c) + _conv_bn_relu(c, c)
            if i < depth - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c_in
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1 and x.shape[1] == 3:
            x = (x * self.luma.to(x.dtype)).sum(1, keepdim=True)
        return self.blocks(x).mean(dim=(2, 3))


def build_scratch(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the random init is part of the recorded spec
    return ScratchCNN(**parse_scratch_arch(arch))


def scratch_data_config(image_size: int | None) -> dict[str, Any]:
    """Preprocessing of a scratch net: resize to ``image_size`` (default 32), scale to [-1, 1]."""
    s = int(image_size or 32)
    return {"input_size": (3, s, s), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}
