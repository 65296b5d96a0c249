"""Built-in sample data (no download): scikit-learn's handwritten digits written out as images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder: str | Path, *, per_class: int | None = None, size: int = 32) -> Path:
    """Write sklearn's 8x8 digits as ``folder/<digit>/<n>.png`` (upscaled to ``size``); idempotent."""
    from sklearn.datasets import load_digits

    folder = Path(folder)
    d = load_digits()
    counts: dict[int, int] = {}
    for img, y in zip(d.images, d.target, strict=True):
        y = int(y)
        k = counts.get(y, 0)
        if per_class is not None and k >= per_class:
            continue
        counts[y] = k + 1
        out = folder / str(y) / f"{k:04d}.png"
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        arr = (255 - img * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white paper
        Image.fromarray(arr, "L").resize((size, size), Image.NEAREST).save(out)
    return folder
