"""Training data: manifest rows -> (augmented) tensors; unreadable images are dropped and counted."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from featpipe.data.images import image_from_array, load_image
from featpipe.data.manifest import Manifest
from featpipe.errors import ImageError
from featpipe.finetune._config import FinetuneConfig


def build_transforms(cfg: FinetuneConfig, data_config: dict[str, Any]) -> dict[str, Callable]:
    """``train``: timm's training transform with the recipe's augmentation (plus torchvision's
    RandomAffine for rotation/shift, which timm's factory lacks); ``eval``: the backbone's own eval
    transform, used for validation, test and every later embedding (never augmented)."""
    from timm.data import create_transform
    from torchvision import transforms as T

    eval_t = create_transform(**data_config, is_training=False)
    knobs = (cfg.hflip, 1.0 - (cfg.scale or 1.0), cfg.rotate, cfg.shift, cfg.color_jitter, cfg.grayscale)
    if cfg.augment == "none" and not any(knobs):
        return {"train": eval_t, "eval": eval_t}
    train_t = create_transform(
        input_size=tuple(data_config["input_size"]), is_training=True, scale=(float(cfg.scale or 1.0), 1.0),
        ratio=(3 / 4, 4 / 3), hflip=float(cfg.hflip or 0.0), vflip=0.0, color_jitter=cfg.color_jitter or None,
        grayscale_prob=float(cfg.grayscale or 0.0), auto_augment=None, re_prob=0.0,
        interpolation=data_config["interpolation"], mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
    )
    if cfg.rotate or cfg.shift:
        shift = float(cfg.shift or 0.0)
        train_t.transforms.insert(0, T.RandomAffine(degrees=float(cfg.rotate or 0.0),
                                                    translate=(shift, shift) if shift else None))
    return {"train": train_t, "eval": eval_t}


def decode(manifest: Manifest, row: int, draft_size: int | None = None) -> Image.Image:
    """One manifest image as RGB (arrays: the row itself); raises :class:`ImageError`."""
    path = manifest.paths[row]
    if manifest.array is not None and "#" in path:
        return image_from_array(np.ascontiguousarray(manifest.array[int(path.rsplit("#", 1)[1])]))
    return load_image(path, target_size=draft_size)


@dataclass
class ImageProbe:
    """What a sample of the training images says: median shorter side (the default input size), their
    common size (w, h) if they share one, and whether every one is gray (R = G = B)."""

    side: int | None
    size: tuple[int, int] | None
    gray: bool


def probe_images(manifest: Manifest, rows: np.ndarray, n: int = 32) -> ImageProbe:
    """Decode ``n`` readable images spread over ``rows`` (class folders are contiguous: the first ``n``
    rows would be one class)."""
    rows = np.asarray(rows)
    pick = rows[np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int))] if len(rows) else rows
    sizes, gray = [], True
    for r in pick:
        try:
            img = decode(manifest, int(r))
        except ImageError:
            continue
        sizes.append(img.size)
        a = np.asarray(img)
        gray = gray and bool((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all())
    if not sizes:
        return ImageProbe(None, None, False)
    common = sizes[0] if all(s == sizes[0] for s in sizes) else None
    return ImageProbe(int(np.median([min(s) for s in sizes])), common, gray)


class ImageRows(Dataset):
    """Rows of a manifest through one transform; a bad image yields ``(None, row, reason)``.

    With ``seed``, the random transform of item ``k`` draws from its own RNG seeded by
    ``(seed, offset + k)``: augmentation is a function of the position in the epoch, the same with any
    number of workers and after a resume in mid-epoch (the global RNG is left untouched).
    """

    def __init__(self, manifest: Manifest, rows: np.ndarray, transform: Callable, draft_size: int | None,
                 seed: int | None = None, offset: int = 0):
        self.manifest = manifest
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform
        self.draft_size = draft_size
        self.seed = seed
        self.offset = offset

    def __len__(self) -> int:
        return len(self.rows)

    def _apply(self, img: Image.Image, k: int) -> torch.Tensor:
        if self.seed is None:
            return self.transform(img)
        s = (self.seed * 1_000_003 + self.offset + k) % 2**63
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):  # timm/torchvision transforms draw from torch and random
            torch.manual_seed(s)
            random.seed(s)
            try:
                return self.transform(img)
            finally:
                random.setstate(py_state)

    def __getitem__(self, k: int) -> tuple[torch.Tensor | None, int, str]:
        row = int(self.rows[k])
        try:
            return self._apply(decode(self.manifest, row, self.draft_size), k), row, ""
        except ImageError as e:
            return None, row, str(e)
        except Exception as e:  # noqa: BLE001 - a decoder bug on one image must not end a run
            return None, row, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:190]


def collate(items: list[tuple[torch.Tensor | None, int, str]]):
    """(batch of good images or None, their rows, [(row, reason)] of the bad ones)."""
    good = [(x, r) for x, r, _ in items if x is not None]
    bad = [(r, e) for x, r, e in items if x is None]
    x = torch.stack([g[0] for g in good]) if good else None
    return x, torch.tensor([g[1] for g in good], dtype=torch.long), bad
