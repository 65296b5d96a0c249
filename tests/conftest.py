"""Shared fixtures: small real images, real tiny torch backbones, real HDF5 caches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("FEATPIPE_OFFLINE", "1")  # never wait on a hub in tests
os.environ.setdefault("FEATPIPE_CPU_BF16", "0")  # --precision auto picks fp32 on every test machine

TINY = "test_efficientnet"  # a real timm architecture, ~10k parameters, random init
TINY_SIZE = 32


def make_class_folders(root: Path, classes: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """Class folders of small PNGs whose colour depends on the class (so heads can learn it)."""
    rng = np.random.default_rng(seed)
    for ci, (cls, n) in enumerate(classes.items()):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        base = np.array([(ci * 97) % 256, (ci * 53 + 80) % 256, (ci * 31 + 160) % 256], dtype=np.float64)
        for k in range(n):
            arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{k:03d}.png")
    return root


@pytest.fixture
def tiny_spec():
    from featpipe.backbones import resolve_spec

    return resolve_spec(TINY, pretrained=False, image_size=TINY_SIZE)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "imgs", {"cat": 12, "dog": 12, "fox": 12})


# ----------------------------------------------------------------------------------- fine-tune tests

# a tiny scratch net that trains in well under a second per run
SMALL = {"backbone": "scratch-cnn", "width": 8, "depth": 2, "batch_size": 8, "precision": "fp32",
         "label_smoothing": 0.0}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small class-folder set for fine-tune runs."""
    return make_class_folders(tmp_path / "imgs", {"cat": 20, "dog": 20, "fox": 20}, size=16)


@pytest.fixture
def one_thread():
    """One torch thread: tiny nets gain nothing from threads (and spin on a loaded machine); and the kill
    test compares with a subprocess run under OMP_NUM_THREADS=1, so both use the same kernels."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
