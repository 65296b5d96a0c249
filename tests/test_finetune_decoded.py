"""The small-image fast path: images decoded once, augmentation on whole batches with the presets'
semantics (shapes, value ranges, flips that flip, crops inside the image, determinism), validation
batches equal to the eval transform, and the fall-backs to per-image decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.data import load_dataset
from featpipe.finetune import FinetuneConfig, build_transforms, finetune
from featpipe.finetune._decoded import TrainAugment, decode_rows, eval_batch

from conftest import TINY, make_class_folders

SMALL = {"backbone": "scratch-cnn", "width": 8, "depth": 2, "batch_size": 8, "precision": "fp32"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "imgs", {"cat": 20, "dog": 20, "fox": 20}, size=16)


def _run(folder: Path, tmp_path: Path, **kw):
    from featpipe.finetune._train import _Run

    run = _Run(load_dataset(folder), FinetuneConfig(**{**SMALL, **kw}), tmp_path / "x", lambda s: None, False)
    run.build()
    return run


def _pil_images(run, rows):
    from featpipe.finetune._data import decode

    return [decode(run.manifest, int(r)) for r in rows]


def test_flip_only_batches_equal_the_pil_transform_and_flip(folder, tmp_path):
    # upscaled 16 -> 32 px as a pretrained net's input would be; no crop (scale 1), flip always
    run = _run(folder, tmp_path, backbone=TINY, pretrained=False, image_size=32, hflip=1.0, scale=1.0, rotate=0.0,
               shift=0.0, color_jitter=0.0, grayscale=0.0)
    assert run.store is not None and run.store.data.shape[1:] == (16, 16, 3)  # kept at native size
    rows = run.store.rows[:8]
    x = run.train_augment(run.store.data[:8], torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    want = torch.stack([run.transforms["train"](img) for img in _pil_images(run, rows)])
    # the same images through timm's training transform (PIL bilinear upscaling vs grid_sample)
    assert (x - want).abs().mean() < 0.03 and (x - want).abs().max() < 0.5
    no_flip = build_transforms(FinetuneConfig(**{**run.cfg.to_dict(), "hflip": 0.0}), run.data_config)["train"]
    unflipped = torch.stack([no_flip(img) for img in _pil_images(run, rows)])
    assert (x - unflipped.flip(-1)).abs().mean() < 0.03 < (x - unflipped).abs().mean()


def test_identity_geometry_is_exact_and_values_stay_in_range(folder, tmp_path):
    run = _run(folder, tmp_path, hflip=1.0, scale=1.0, rotate=0.0, shift=0.0, color_jitter=0.0, grayscale=0.0)
    u8 = run.store.data[:8]
    x = run.train_augment(u8, torch.Generator().manual_seed(0))
    ref = (torch.as_tensor(u8).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, ref.flip(-1), atol=1e-5, rtol=0)  # a flip that flips, nothing else
    strong = TrainAugment(FinetuneConfig(augment="strong", grayscale=1.0, color_jitter=0.4).resolved(),
                          run.data_config)
    y = strong(u8, torch.Generator().manual_seed(1))
    assert y.shape == (8, 3, 16, 16) and float(y.min()) >= -1 - 1e-6 and float(y.max()) <= 1 + 1e-6
    torch.testing.assert_close(y[:, 0], y[:, 1])  # grayscale probability 1
    torch.testing.assert_close(y[:, 1], y[:, 2])
    rot = TrainAugment(FinetuneConfig(augment="none", rotate=90.0).resolved(), run.data_config)
    assert not torch.allclose(rot(u8, torch.Generator().manual_seed(2)), ref, atol=1e-3)


def test_augmentation_is_deterministic_with_a_seed(folder, tmp_path):
    run = _run(folder, tmp_path, augment="strong")
    a = [x for x, _, _ in run._train_batches(1, 0, 11)]
    b = [x for x, _, _ in run._train_batches(1, 0, 11)]
    c = [x for x, _, _ in run._train_batches(1, 0, 12)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    # a resume at step 2 sees the very batches an uninterrupted epoch sees from there
    late = [x for x, _, _ in run._train_batches(1, 2, 11)]
    assert all(torch.equal(p, q) for p, q in zip(a[2:], late, strict=True))
    rows = np.concatenate([r.numpy() for _, r, _ in run._train_batches(1, 0, 11)])
    np.testing.assert_array_equal(rows, run.epoch_order(1))


def test_crops_follow_timms_random_resized_crop():
    aug = TrainAugment(FinetuneConfig(augment="strong").resolved(),
                       {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    w, h = 40, 30
    left, top, cw, ch = aug._crops(4000, w, h, torch.Generator().manual_seed(0))
    assert bool((left >= 0).all() and (top >= 0).all() and (left + cw <= w).all() and (top + ch <= h).all())
    area = cw * ch / (w * h)
    assert float(area.min()) >= 0.35 - 0.05 and float(area.max()) <= 1.0
    ratio = cw / ch
    assert float(ratio.min()) > 0.7 and float(ratio.max()) < 1.4
    assert float(area.std()) > 0.1  # crops of many sizes, not one


def test_validation_batches_equal_the_eval_transform(folder, tmp_path):
    run = _run(folder, tmp_path, backbone=TINY, pretrained=False, image_size=32)
    assert run.val_store is not None
    rows = run.rows["val"]
    batches = run._stored_batches(rows, run.val_store, run._val_slot,
                                  lambda u8, _k: eval_batch(u8, run._eval_scale, run._eval_shift))
    got = torch.cat([x for x, _, _ in batches])
    want = torch.stack([run.transforms["eval"](img) for img in _pil_images(run, rows)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    z_fast, ok_fast = run.logits(rows)
    z_pil, ok_pil = run.logits(rows, per_image=True)
    np.testing.assert_allclose(z_fast, z_pil, atol=1e-4)


def test_unreadable_rows_are_recorded_at_decode(folder, tmp_path):
    (folder / "cat" / "broken.png").write_bytes(b"not an image")
    m = load_dataset(folder)
    bad = m.ids.index(next(i for i in m.ids if "broken" in i))
    rows = np.arange(len(m))
    store = decode_rows(m, rows, size=(16, 16))
    assert list(store.failed) == [bad] and len(store.rows) == len(m) - 1
    assert store.data.shape == (len(m) - 1, 16, 16, 3) and store.data.dtype == np.uint8


def test_fall_back_to_per_image_decoding(tmp_path, monkeypatch):
    from featpipe.finetune import _train

    mixed = make_class_folders(tmp_path / "mixed", {"a": 6, "b": 6}, size=16)
    for k in range(3):
        Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(mixed / "a" / f"big{k}.png")
    msgs: list[str] = []
    res = finetune(load_dataset(mixed), FinetuneConfig(**SMALL, epochs=1), tmp_path / "r1", progress=False,
                   log=msgs.append)
    assert not res.history["decoded_once"] and any("differ in size" in s for s in msgs)
    monkeypatch.setattr(_train, "memory_budget", lambda: 100)  # 100 bytes: nothing fits
    same = make_class_folders(tmp_path / "same", {"a": 6, "b": 6}, size=16)
    msgs.clear()
    res = finetune(load_dataset(same), FinetuneConfig(**SMALL, epochs=1), tmp_path / "r2", progress=False,
                   log=msgs.append)
    assert not res.history["decoded_once"] and any("over the" in s for s in msgs)


def test_both_paths_train_the_same_recipe(folder, tmp_path):
    """Fast path and per-image path: same data, same net, similar learning (augmentation draws differ)."""
    cfg = {**SMALL, "epochs": 6, "patience": 10, "lr": 1e-2, "label_smoothing": 0.0}
    fast = finetune(load_dataset(folder), FinetuneConfig(**cfg), tmp_path / "fast", progress=False,
                    log=lambda s: None)
    slow = finetune(load_dataset(folder), FinetuneConfig(**cfg, decode_once=False), tmp_path / "slow",
                    progress=False, log=lambda s: None)
    assert fast.history["decoded_once"] and not slow.history["decoded_once"]
    assert fast.metrics["scores"]["val"]["main"] > 0.6 and slow.metrics["scores"]["val"]["main"] > 0.6
    lf = [e["train_loss"] for e in fast.history["epochs"]]
    assert lf[-1] < 0.7 * lf[0]

