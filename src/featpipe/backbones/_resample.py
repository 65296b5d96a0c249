"""PIL's resize, bit for bit, on uint8 image tensors on any device.

Hand-written because no torch op reproduces it: PIL resamples in two passes (horizontal, then
vertical) with 22-bit fixed-point weights and rounds to uint8 between them; torch's antialiased
``interpolate`` (the same filters) works in float in one go and lands 1-10 levels off on ~20% of the
pixels, which moves EfficientNet features by several percent. Here each pass is a float64 matrix
product of PIL's own integer weights (exact: every partial sum is an integer below 2**53).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

_PRECISION_BITS = 32 - 8 - 2  # PIL's Resample.c


def _box(x: np.ndarray) -> np.ndarray:
    return ((x > -0.5) & (x <= 0.5)).astype(np.float64)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    px = x * math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.sin(px) / px * (float(np.float32(0.54)) + float(np.float32(0.46)) * np.cos(px))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, w))


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    px = x * math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0.0, 1.0, np.sin(px) / px)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


# PIL's filters and their supports, by the names torchvision's InterpolationMode uses
FILTERS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "box": (_box, 0.5), "bilinear": (_bilinear, 1.0), "hamming": (_hamming, 1.0),
    "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0),
}


def _weights(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """PIL's fixed-point weights as an ``(out_size, in_size)`` matrix (``precompute_coeffs`` and
    ``normalize_coeffs_8bpc`` of Resample.c, the same double arithmetic, all rows at once)."""
    fn, support = FILTERS[interpolation]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) cast truncates
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    pos = xmin[:, None] + np.arange(int(math.ceil(support)) * 2 + 1)
    valid = pos < xmax[:, None]
    w = np.where(valid, fn((pos - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    ww = np.cumsum(w, axis=1)[:, -1:]  # summed in order, as the C loop does (adding zeros changes nothing)
    w = np.where(ww != 0.0, w / np.where(ww != 0.0, ww, 1.0), w)
    kk = np.trunc(np.where(w < 0, -0.5, 0.5) + w * (1 << _PRECISION_BITS))
    out = np.zeros((out_size, in_size + pos.shape[1]), dtype=np.float64)  # room for the unused tail taps
    np.put_along_axis(out, pos, np.where(valid, kk, 0.0), axis=1)
    return out[:, :in_size]


@functools.lru_cache(maxsize=256)
def _weights_on(in_size: int, out_size: int, interpolation: str, device: torch.device) -> torch.Tensor:
    """:func:`_weights`, transposed for ``x @ w``, as a float64 tensor on ``device``."""
    return torch.tensor(_weights(in_size, out_size, interpolation).T, dtype=torch.float64, device=device)


def _pass(x: torch.Tensor, in_size: int, out_size: int, interpolation: str) -> torch.Tensor:
    """One PIL pass along the last axis of float64 ``x`` (integer pixel values), rounded to 0..255."""
    acc = torch.matmul(x, _weights_on(in_size, out_size, interpolation, x.device)) + (1 << (_PRECISION_BITS - 1))
    return torch.floor_(acc / (1 << _PRECISION_BITS)).clamp_(0, 255)


def _vertical_first(h: int, w: int, oh: int, ow: int) -> bool:
    """Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many
    pixels as the width does (python-pillow/Pillow#9549); older Pillow always starts horizontally."""
    return _pillow_order() == "rule" and h - oh > 0 and h - oh > 2 * (w - ow)


def _resize(images: torch.Tensor, size: tuple[int, int], interpolation: str, order: str) -> torch.Tensor:
    h, w = images.shape[-2:]
    oh, ow = size
    x = images.to(torch.float64)
    horizontal = (lambda t: _pass(t, w, ow, interpolation)) if w != ow else (lambda t: t)
    vertical = ((lambda t: _pass(t.transpose(-1, -2), h, oh, interpolation).transpose(-1, -2))
                if h != oh else (lambda t: t))  # PIL skips a pass whose axis keeps its size
    vfirst = order == "vertical" or (order == "auto" and _vertical_first(h, w, oh, ow))
    x = horizontal(vertical(x)) if vfirst else vertical(horizontal(x))
    return x.to(torch.uint8).contiguous()


@functools.cache
def _pillow_order() -> str | None:
    """Which pass order the installed Pillow uses: ``rule`` (see :func:`_vertical_first`),
    ``horizontal`` (always first), or None when neither reproduces it (then nothing here is used)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    probes = [((60, 20), (20, 18)), ((40, 30), (35, 12)), ((17, 23), (50, 41))]  # (h, w) -> (h, w)
    found = set()
    for order in ("rule", "horizontal"):
        ok = True
        for (h, w), (oh, ow) in probes:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ref = np.asarray(Image.fromarray(arr).resize((ow, oh), Image.Resampling.BICUBIC))
            vfirst = order == "rule" and h - oh > 0 and h - oh > 2 * (w - ow)
            got = _resize(torch.from_numpy(arr).permute(2, 0, 1), (oh, ow), "bicubic",
                          "vertical" if vfirst else "horizontal")
            ok = ok and np.array_equal(ref, got.permute(1, 2, 0).numpy())
        if ok:
            found.add(order)
    return "rule" if "rule" in found else ("horizontal" if found else None)


def pil_resize(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """``PIL.Image.resize`` of uint8 ``(..., C, H, W)`` images to ``size = (h, w)``, on their device."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return _resize(images, size, interpolation, "auto")


def resized_size(h: int, w: int, size: int | Sequence[int], max_size: int | None = None) -> tuple[int, int]:
    """Output ``(h, w)`` of torchvision's ``Resize(size)`` (shorter side when ``size`` is one number)."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    req = int(size if isinstance(size, int) else size[0])
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = req, int(req * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if w <= h else (new_short, new_long)


# Work in slices of at most this many float64 elements (256 MiB), so a batch of 256 images
# upscaled to 256 px does not hold 400 MiB of intermediates at once.
_CHUNK_ELEMENTS = 32 << 20


def tensor_geometry(steps: Sequence[Any]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The PIL steps of a timm eval transform (``Resize``, ``CenterCrop``) as one function of uint8
    ``(N, C, H, W)`` tensors (all of one size) giving exactly what the steps give each PIL image;
    ``None`` if a step has no exact tensor form here (another transform, nearest-neighbour)."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as F

    if _pillow_order() is None:
        return None
    plan: list[tuple[str, Any]] = []
    for t in steps:
        if type(t) is T.Resize:
            mode = t.interpolation.value if hasattr(t.interpolation, "value") else str(t.interpolation)
            if mode not in FILTERS:
                return None
            plan.append(("resize", (t.size, t.max_size, mode)))
        elif type(t) is T.CenterCrop:
            plan.append(("crop", list(t.size)))
        else:
            return None

    def apply(images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        side = max([h, w] + [max(resized_size(h, w, a[0], a[1])) for k, a in plan if k == "resize"])
        per = max(1, _CHUNK_ELEMENTS // (c * side * side))
        if n > per:
            return torch.cat([apply(images[i:i + per]) for i in range(0, n, per)])
        x = images
        for kind, arg in plan:
            if kind == "resize":
                size, max_size, mode = arg
                x = pil_resize(x, resized_size(x.shape[-2], x.shape[-1], size, max_size), mode)
            else:
                x = F.center_crop(x, arg)
        return x

    return apply
