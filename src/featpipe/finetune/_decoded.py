"""The small-image fast path: training (and validation) images decoded once into a uint8 array, and
the training augmentation done on whole batches in torch instead of PIL per image and per epoch.

The batched augmentation keeps the presets' semantics (timm's random resized crop with its 10 tries
and centre fallback, horizontal flip, torchvision's RandomAffine rotation and shift with black fill,
brightness/contrast/saturation jitter in a random order, random grayscale); crop, flip, rotation,
shift and the resize to the training size (e.g. 32 -> 128px) are one affine resampling per batch.
Validation images go through the backbone's eval geometry (resize, crop) once and are normalised per
batch as embed does (``TorchBackbone.geometry``), so early stopping sees what the final embedding sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from featpipe.data.manifest import Manifest
from featpipe.finetune._config import FinetuneConfig
from featpipe.finetune._data import ImageRows

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L") and torchvision's rgb_to_grayscale


def memory_budget() -> int:
    """Bytes the decoded images may take: an eighth of the RAM (a quarter of fit's default budget),
    at most 4 GiB; 1 GiB where the OS does not say."""
    from featpipe.runs.fit import default_memory_budget

    half = default_memory_budget()
    return int(min(4 << 30, half // 4)) if half else 1 << 30


@dataclass
class DecodedImages:
    """Images of ``rows`` as one ``(N, H, W, C)`` uint8 array (``C`` = 1 when every image is gray);
    rows that could not be read are in ``failed`` (row -> reason) and have no slot."""

    rows: np.ndarray
    data: np.ndarray
    failed: dict[int, str]
    n_resized: int = 0

    @property
    def gray(self) -> bool:
        return self.data.shape[-1] == 1

    def index(self, n_manifest: int) -> np.ndarray:
        """Manifest row -> slot in ``data`` (-1: not decoded)."""
        pos = np.full(n_manifest, -1, dtype=np.int64)
        pos[self.rows] = np.arange(len(self.rows))
        return pos


class _ToArray:
    """PIL image -> (HWC uint8 tensor, original size): through ``pil_part`` (an eval geometry giving a
    uint8 array), or resized to ``size`` (w, h) when it has another size."""

    def __init__(self, pil_part: Callable | None, size: tuple[int, int] | None, interpolation: str):
        self.pil_part = pil_part
        self.size = size
        self.interpolation = interpolation

    def __call__(self, img: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        from PIL import Image

        if self.pil_part is not None:
            a = np.array(self.pil_part(img), dtype=np.uint8)  # a writable copy
            return torch.from_numpy(a if a.ndim == 3 else np.repeat(a[..., None], 3, 2)), img.size
        orig = img.size
        if self.size is not None and img.size != self.size:
            resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
            img = img.resize(self.size, resample)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.array(img, dtype=np.uint8)), orig


def _collate(items):
    return items


def decode_rows(manifest: Manifest, rows: np.ndarray, *, size: tuple[int, int] | None = None,
                pil_part: Callable | None = None, interpolation: str = "bilinear", workers: int = 0,
                draft: int | None = None, progress: Callable[[int], None] | None = None) -> DecodedImages:
    """Decode ``rows`` once: through ``pil_part`` (the eval transform's PIL steps) or resized to ``size``
    (w, h) where an image has another size. Unreadable rows are recorded, never fatal."""
    rows = np.asarray(rows, dtype=np.int64)
    ds = ImageRows(manifest, rows, _ToArray(pil_part, size, interpolation), draft)
    loader = DataLoader(ds, batch_size=64, num_workers=workers if len(rows) > 256 else 0, collate_fn=_collate)
    good: list[int] = []
    arrays: list[torch.Tensor] = []
    failed: dict[int, str] = {}
    n_resized = 0
    for batch in loader:
        for x, row, err in batch:
            if x is None:
                failed[int(row)] = err
                continue
            arr, orig = x
            n_resized += int(size is not None and tuple(orig) != tuple(size))
            good.append(int(row))
            arrays.append(arr)
        if progress:
            progress(len(batch))
    if arrays:
        data = torch.stack(arrays).numpy()
        if bool((data[..., 0] == data[..., 1]).all() and (data[..., 0] == data[..., 2]).all()):
            data = np.ascontiguousarray(data[..., :1])  # every image is gray: one channel is the image
    else:
        h, w = (size[1], size[0]) if size else (1, 1)
        data = np.zeros((0, h, w, 3), dtype=np.uint8)
    return DecodedImages(rows=np.asarray(good, dtype=np.int64), data=data, failed=failed, n_resized=n_resized)


def to_float(u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float in [0, 1], as torchvision's to_tensor (``div(255)``)."""
    x = torch.as_tensor(u8)
    return x.permute(0, 3, 1, 2).to(dtype=torch.float32).div(255)


def eval_batch(u8: np.ndarray | torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 from an eval geometry -> the normalised batch, as ``TorchBackbone.forward``
    normalises uint8 batches (gray images get their three equal channels back)."""
    x = torch.as_tensor(u8).permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return torch.addcmul(shift, x, scale).contiguous(memory_format=torch.channels_last)


class TrainAugment:
    """Decoded uint8 training batches -> augmented, normalised network input; the random draws come
    from the ``generator`` given per batch (deterministic with a seed, whatever the resume point)."""

    def __init__(self, cfg: FinetuneConfig, data_config: dict[str, Any], channels: int = 3):
        self.size = tuple(int(s) for s in data_config["input_size"][1:])  # (h, w)
        self.mode = "bicubic" if data_config.get("interpolation") == "bicubic" else "bilinear"
        self.mean = torch.tensor(tuple(data_config["mean"]), dtype=torch.float32)
        self.std = torch.tensor(tuple(data_config["std"]), dtype=torch.float32)
        self.channels = channels  # 1: a grayscale-native net fed one channel, else 3
        self.hflip = float(cfg.hflip or 0.0)
        self.scale = float(cfg.scale or 1.0)
        self.rotate = float(cfg.rotate or 0.0)
        self.shift = float(cfg.shift or 0.0)
        self.jitter = float(cfg.color_jitter or 0.0)
        self.grayscale = float(cfg.grayscale or 0.0)

    def __call__(self, u8: np.ndarray | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self._colour(self._geometry(to_float(u8), generator), generator)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        c = x.shape[1]
        return ((x - self.mean[:c].view(1, c, 1, 1)) / self.std[:c].view(1, c, 1, 1)).contiguous(
            memory_format=torch.channels_last)

    # ----------------------------------------------------------------------------------- geometry
    def _crops(self, b: int, w: int, h: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        """timm's RandomResizedCrop parameters for ``b`` images: (left, top, width, height) in pixels."""
        area = float(w * h)
        tries = 10
        target = area * (self.scale + (1.0 - self.scale) * torch.rand(b, tries, generator=g, dtype=torch.float64))
        lo, hi = math.log(3 / 4), math.log(4 / 3)
        aspect = torch.exp(lo + (hi - lo) * torch.rand(b, tries, generator=g, dtype=torch.float64))
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        ok = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
        first = torch.argmax(ok.to(torch.int8), dim=1)  # the first try that fits, as timm's loop
        take = torch.arange(b)
        cw, ch, any_ok = cw[take, first], ch[take, first], ok.any(dim=1)
        in_ratio = w / h  # no try fitted: centre crop of the whole image at the nearest allowed ratio
        fw, fh = (float(w), float(round(w / (3 / 4)))) if in_ratio < 3 / 4 else (
            (float(round(h * 4 / 3)), float(h)) if in_ratio > 4 / 3 else (float(w), float(h)))
        cw = torch.where(any_ok, cw, torch.full_like(cw, fw))
        ch = torch.where(any_ok, ch, torch.full_like(ch, fh))
        u = torch.rand(b, 2, generator=g, dtype=torch.float64)
        left = torch.where(any_ok, torch.floor(u[:, 0] * (w - cw + 1)), (w - cw) / 2)
        top = torch.where(any_ok, torch.floor(u[:, 1] * (h - ch + 1)), (h - ch) / 2)
        return left, top, cw, ch

    def _geometry(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Rotation + shift (RandomAffine, black fill), random resized crop, resize, horizontal flip:
        one affine map from output to source pixels per image, one resampling per batch."""
        b, _, h, w = x.shape
        left, top, cw, ch = self._crops(b, w, h, g)
        flip = torch.rand(b, generator=g, dtype=torch.float64) < self.hflip
        angle = (torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(self.rotate)
        t = (torch.rand(b, 2, generator=g, dtype=torch.float64) * 2 - 1) * self.shift
        tx, ty = torch.round(t[:, 0] * w), torch.round(t[:, 1] * h)
        # output (u, v) in [-1, 1] -> crop pixel offsets from the image centre -> undo the affine
        cx, cy = left + cw / 2 - w / 2, top + ch / 2 - h / 2
        sx = torch.where(flip, -cw / 2, cw / 2)
        sy = ch / 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        # inverse rotation R(-angle) applied to (D [u v] + c - t)
        a11, a12 = cos * sx, sin * sy
        a21, a22 = -sin * sx, cos * sy
        dx, dy = cx - tx, cy - ty
        b1, b2 = cos * dx + sin * dy, -sin * dx + cos * dy
        theta = torch.stack([torch.stack([a11 * 2 / w, a12 * 2 / w, b1 * 2 / w], 1),
                             torch.stack([a21 * 2 / h, a22 * 2 / h, b2 * 2 / h], 1)], 1).to(torch.float32)
        oh, ow = self.size
        grid = F.affine_grid(theta, [b, x.shape[1], oh, ow], align_corners=False)
        # edges resample as PIL's resize does (clamped); only points outside the image are black (the fill)
        out = F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)
        if self.rotate or self.shift:
            inside = (grid.abs() <= 1.0).all(dim=-1).unsqueeze(1)
            out = out * inside
        return out.clamp_(0.0, 1.0) if self.mode == "bicubic" else out

    # ------------------------------------------------------------------------------------- colour
    @staticmethod
    def _gray(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x
        r, g, b = x.unbind(1)
        return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)

    def _colour(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        if self.jitter > 0:
            lo, hi = max(0.0, 1.0 - self.jitter), 1.0 + self.jitter
            factors = lo + (hi - lo) * torch.rand(3, b, 1, 1, 1, generator=g)
            for k in torch.randperm(3, generator=g).tolist():  # ColorJitter's random order, one per batch
                f = factors[k]
                if k == 0:  # brightness
                    x = (x * f).clamp_(0, 1)
                elif k == 1:  # contrast: blend with the mean gray level
                    m = self._gray(x).mean(dim=(1, 2, 3), keepdim=True)
                    x = (f * x + (1 - f) * m).clamp_(0, 1)
                elif x.shape[1] == 3:  # saturation: blend with the gray image
                    x = (f * x + (1 - f) * self._gray(x)).clamp_(0, 1)
        if self.grayscale > 0 and x.shape[1] == 3:
            pick = (torch.rand(b, generator=g) < self.grayscale).view(b, 1, 1, 1)
            x = torch.where(pick, self._gray(x).expand(-1, 3, -1, -1), x)
        return x
