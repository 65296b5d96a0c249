"""Tiny on-the-fly test images (no fixtures from disk, no /work/shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def noise(w: int = 16, h: int = 16, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    ch = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (h, w, ch) if ch else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def write_image(path: Path, w: int = 16, h: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = noise(w, h, seed)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}.get(
        path.suffix.lower(), "PNG"
    )
    img.save(path, format=fmt)
    return path


def make_class_folders(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for c, n in counts.items():
        for i in range(n):
            write_image(root / c / f"{i:04d}{ext}", seed=i)
    return root
