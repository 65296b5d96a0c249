"""Resizing, and optionally JPEG decoding, on the model's device instead of in the CPU loaders.

``--decode device``: the loaders read, hash and decode each image (PIL, as ever); an image smaller
than the model's input is handed over at its own size and resized and cropped on the device with
PIL's own arithmetic (:mod:`featpipe.backbones._resample`), a larger one is resized by PIL in the
loaders as before (its resize costs less than its decode, and the result is the smaller copy). The
features are the CPU path's bit for bit. Small images upscaled to the model's size are what bounded
a GPU: the resize was ~3/4 of the CPU's work per image, and their pixels are 10-50x less to copy.

``--decode device-jpeg``: plain JPEGs (:func:`featpipe.data.images.plain_jpeg_size`, not reduced by PIL's
draft for any backbone) are decoded there too, batched (torchvision's ``decode_jpeg``: nvJPEG on CUDA,
libjpeg-turbo on CPU). Anything else, and any file the device decoder refuses, is decoded by PIL
with the same failed-row contract. nvJPEG's pixels differ from libjpeg-turbo's by a level or two, so
its caches are keyed apart (:func:`featpipe.features.cache.features_key`).
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featpipe.data.images import failure_reason, load_image
from featpipe.errors import FeaturepipeError, ImageError
from featpipe.features import cache as fcache
from featpipe.features.config import DECODE_CHOICES

if TYPE_CHECKING:
    from featpipe.backbones import Backbone



def resolve_decode(decode: str, backbones: Sequence[Backbone]) -> str:
    """``cpu``, ``device`` or ``device-jpeg`` for these backbones: ``auto`` is ``device`` when they run
    on CUDA and can all resize on it, else ``cpu``. A forced device mode a backbone cannot run: one line."""
    if decode not in DECODE_CHOICES:
        raise FeaturepipeError(f"unknown decode mode {decode!r}; expected one of {', '.join(DECODE_CHOICES)}")
    unable = [b for b in backbones if getattr(b, "tensor_geometry", None) is None]
    if decode == "auto":
        return "device" if not unable and backbones[0].device.startswith("cuda") else "cpu"
    if decode != "cpu" and unable:
        raise FeaturepipeError(
            f"--decode {decode}: {unable[0].spec.tag()} cannot resize on the device (its preprocessing is not "
            "a resize + center crop PIL can do on tensors, or it aligns faces); use --decode cpu or auto")
    if decode == "device-jpeg" and not _jpeg_decoder_works(backbones[0].device):
        raise FeaturepipeError(f"--decode device-jpeg: torchvision cannot decode JPEGs on {backbones[0].device} "
                               "here (built without nvJPEG?); use --decode device")
    return decode


@functools.cache
def _jpeg_decoder_works(device: str) -> bool:
    """One small JPEG through the device decoder, once per device: a torchvision without nvJPEG would
    otherwise send every file back to PIL, one by one."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 40, 90)).save(buf, "JPEG")
    return decode_jpegs([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device)[0] is not None


def uses_nvjpeg(decode: str, device: str) -> bool:
    """Whether JPEGs are decoded by nvJPEG (whose pixels differ slightly from PIL's libjpeg-turbo)."""
    return decode == "device-jpeg" and device.startswith("cuda")


@dataclass
class Packed:
    """Variable-size byte strings of some rows of a batch in one uint8 tensor: encoded files
    (``shapes`` empty) or decoded HWC pixels (``shapes`` (k, 3)). One tensor crosses the loader's
    process boundary (shared memory) and is copied to the device at once."""

    rows: np.ndarray
    blob: torch.Tensor
    ends: np.ndarray
    shapes: np.ndarray

    @classmethod
    def of(cls, items: dict[int, Any]) -> Packed | None:
        if not items:
            return None
        rows = np.array(sorted(items), dtype=np.int64)
        files = isinstance(items[int(rows[0])], bytes)
        parts = [np.frombuffer(items[r], np.uint8) if files else items[r].reshape(-1) for r in rows]
        shapes = np.zeros((0, 3), np.int64) if files else np.array([items[r].shape for r in rows], np.int64)
        return cls(rows, torch.from_numpy(np.concatenate(parts)), np.cumsum([len(p) for p in parts]), shapes)

    def pieces(self, blob: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each row's bytes as a view of ``blob`` (default: the packed one)."""
        blob = self.blob if blob is None else blob
        starts = np.concatenate([[0], self.ends[:-1]])
        return [blob[int(s):int(e)] for s, e in zip(starts, self.ends, strict=True)]

    def images(self, blob: torch.Tensor) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Decoded pixels as ``(rows, (k, C, H, W) images)`` groups of one size each (one view, no
        copy, when all rows share a size: a CIFAR-like batch is one group)."""
        if (self.shapes == self.shapes[0]).all():
            return [(self.rows, blob.view(len(self.rows), *(int(v) for v in self.shapes[0])).permute(0, 3, 1, 2))]
        views = [p.view(*(int(v) for v in shp)).permute(2, 0, 1) for p, shp in zip(self.pieces(blob), self.shapes,
                                                                                 strict=True)]
        return _grouped(self.rows.tolist(), views)

    def pin_memory(self) -> Packed:
        self.blob = self.blob.pin_memory()
        return self


def decode_jpegs(files: list[torch.Tensor], device: str) -> list[torch.Tensor | None]:
    """RGB (3, H, W) uint8 images decoded on ``device`` in one batched call; None for each file the
    decoder refuses or warns about (PIL then decides it). A failing file fails the whole batched call,
    so the batch is then retried file by file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def run(items: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # corrupt-data warnings: let PIL judge the file
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
            return list(decode_jpeg(items, mode=ImageReadMode.RGB, device=device))

    def rgb(img: torch.Tensor | None) -> torch.Tensor | None:
        return img if img is not None and img.ndim == 3 and img.shape[0] == 3 else None

    try:
        return [rgb(img) for img in run(files)]
    except (RuntimeError, UserWarning, ValueError):
        pass
    out: list[torch.Tensor | None] = []
    for f in files:
        try:
            out.append(rgb(run([f])[0]))
        except (RuntimeError, UserWarning, ValueError):
            out.append(None)
    return out


def _grouped(rows: list[int], images: list[torch.Tensor]) -> list[tuple[np.ndarray, torch.Tensor]]:
    """(C, H, W) images stacked into one batch per size, with their rows."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for k, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape), []).append(k)
    return [(np.array([rows[k] for k in ks], np.int64), torch.stack([images[k] for k in ks]))
            for ks in by_shape.values()]


def place_on_device(batch: Any, cuts: dict[Any, Any], device: str) -> None:
    """Fill ``batch.inputs`` (uint8 (B, H, W, C) on ``device``, one per cut) from what the loaders
    packed: inputs they resized, pixels to resize here, JPEG files to decode here (one the device
    refuses goes through PIL here; one PIL refuses becomes a failed row)."""
    n = len(batch.rows)
    # decode size (-1: arrays, 0: JPEGs decoded here, whatever the cut) -> (rows, NCHW uint8) groups
    sources = {size: packed.images(packed.blob.to(device, non_blocking=True))
               for size, packed in batch.pixels.items()}
    if batch.jpegs is not None:
        files = batch.jpegs.pieces()
        draft = next(iter(cuts.values())).draft  # plain JPEGs are not reduced by any cut's draft
        rows, images = [], []
        for row, img, f in zip(batch.jpegs.rows.tolist(), decode_jpegs(files, device), files, strict=True):
            if img is None:
                try:
                    pil = np.asarray(load_image(f.numpy().tobytes(), target_size=draft))
                    img = torch.from_numpy(pil.copy()).to(device).permute(2, 0, 1)
                except Exception as e:  # the CPU path's verdict on a file: a failed row, never the end of a run
                    batch.status[row], batch.errors[row] = fcache.FAILED, failure_reason(e)
                    continue
            rows.append(row)
            images.append(img)
        sources[0] = _grouped(rows, images)
    for key, cut in cuts.items():
        h, w, c = cut.shape
        x = torch.zeros((n, h, w, c), dtype=torch.uint8, device=device)
        for rows_, imgs in [*sources.get(-1, []), *sources.get(cut.draft, []), *sources.get(0, [])]:
            out = cut.tensor_fn(imgs)
            if tuple(out.shape[1:]) != (c, h, w):
                for r in rows_.tolist():
                    batch.status[r] = fcache.FAILED
                    batch.errors[r] = str(ImageError(f"preprocessing gave shape {tuple(out.shape[1:])}, "
                                                     f"expected {(c, h, w)}"))
                continue
            x[torch.from_numpy(rows_).to(device)] = out.permute(0, 2, 3, 1)
        if (done := batch.resized.get(key)) is not None:
            x[torch.from_numpy(done.rows).to(device)] = done.blob.to(device, non_blocking=True).view(-1, h, w, c)
        batch.inputs[key] = x
    batch.pixels, batch.resized, batch.jpegs = {}, {}, None
