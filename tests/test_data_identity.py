"""Every source keeps the manifest it has always made: ids, splits, labels and the split record feed the
cache keys, so a refactor of the sources must not move one image. The expected values were computed with
the sources as they were before they became one module per format (featpipe 868e7d3)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from featpipe.data import Manifest, load_dataset


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _folder_images(root: Path, counts: dict[str, int]) -> None:
    for c, n in counts.items():
        for i in range(n):
            _write(root / c / f"{i:02d}.png", f"{root.name}/{c}/{i}".encode())


def class_folders(tmp: Path) -> tuple[Path, dict]:
    root = tmp / "cf"
    _folder_images(root, {"a": 9, "b": 7, "c": 4})
    _write(root / "b" / "dup.png", (root / "a" / "00.png").read_bytes())  # a copy across classes
    _write(root / "a" / "notes.txt", b"x")
    (root / "empty").mkdir()
    _write(root / "stray.png", b"stray")
    return root, {}


def split_folders(tmp: Path) -> tuple[Path, dict]:
    root = tmp / "sf"
    _folder_images(root / "train", {"a": 10, "b": 8, "c": 5})
    _folder_images(root / "Test", {"a": 3, "b": 2, "c": 2})
    for i in range(3):
        _write(root / "pred" / f"{i}.jpg", f"pred{i}".encode())
    _write(root / "train" / "a" / "copy.png", (root / "train" / "b" / "01.png").read_bytes())
    return root, {"val_fraction": 0.2, "seed": 3}


def _csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def csv_single(tmp: Path) -> tuple[Path, dict]:
    root = tmp / "cs"
    rows = []
    for i in range(24):
        _write(root / "img" / f"{i}.jpg", f"cs{i % 21}".encode())  # 21..23 copy 0..2
        rows.append([f"img/{i}.jpg", "" if i in (5, 11) else ["dog", "cat", "bird"][i % 3]])
    rows.append(["img/missing.jpg", "cat"])
    rows.append(["img/3.jpg", "dog"])  # the same row again
    _csv(root / "labels.csv", ["filename", "class"], rows, delimiter=";")
    return root / "labels.csv", {"unlabeled_empty": True, "seed": 1, "fractions": (0.6, 0.2, 0.2)}


def csv_split_multilabel(tmp: Path) -> tuple[Path, dict]:
    root = tmp / "cm"
    rows = []
    for i in range(30):
        _write(root / f"p{i}.png", f"cm{i}".encode())
        tags = "|".join(t for t, m in (("sky", 2), ("sea", 3), ("tree", 5)) if i % m == 0)
        rows.append([f"p{i}.png", tags, "val" if i % 7 == 0 else ("pred" if i % 11 == 0 else "train")])
    _csv(root / "data.csv", ["path", "tags", "subset"], rows)
    return root / "data.csv", {}


def csv_onehot(tmp: Path) -> tuple[Path, dict]:
    root = tmp / "co"
    rows = []
    for i in range(20):
        _write(root / "i" / f"{i}.png", f"co{i}".encode())
        rows.append([f"i/{i}.png", str(int(i % 2 == 0)), str(int(i % 3 == 0)), f"id{i:02d}"])
    _csv(root / "t.csv", ["image", "red", "round", "key"], rows)
    return root / "t.csv", {"id_col": "key", "seed": 7}


def label_lists(tmp: Path) -> tuple[Path, dict]:
    root = tmp / "ll"
    for i in range(1, 26):
        _write(root / "images" / f"im{i}.jpg", f"ll{i}".encode())
    _write(root / "images" / "im26.jpg", (root / "images" / "im4.jpg").read_bytes())
    for name, ids in (("flower", [1, 2, 3, 4, 5, 6, 7, 8, 26]), ("people", [2, 4, 9, 10, 11, 12, 40]),
                      ("night", [13, 14, 15, 16, 3])):
        _write(root / "annotations" / f"{name}.txt", "\n".join(str(i) for i in ids).encode())
    return root, {}


def npz_plain(tmp: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    images[29] = images[0]
    labels = np.array([i % 3 for i in range(30)])
    labels[[4, 9]] = -1
    p = tmp / "plain.npz"
    np.savez(p, images=images, labels=labels)
    return p, {}


def npz_split(tmp: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 4, 4), dtype=np.uint8)
    labels = np.array(["x", "y", "z", "x"] * 6)
    split = np.array(["training"] * 18 + ["dev"] * 4 + ["extra"] * 2)
    p = tmp / "split.npz"
    np.savez(p, images=images, labels=labels, split=split)
    return p, {"seed": 2}


def npz_multilabel(tmp: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)
    y = (rng.random((20, 3)) < 0.4).astype(np.uint8)
    p = tmp / "multi.npz"
    np.savez(p, images=images, labels=y)
    return p, {"class_names": ["u", "v", "w"]}


def _summary(m: Manifest, root: Path) -> tuple:
    info = m.info()
    return (m.fingerprint(), m.task, [str(c) for c in m.classes], dict(sorted(info["split_counts"].items())),
            [m.split_seed, list(m.split_fractions) if m.split_fractions else None, m.split_repairs,
             m.split_copies_moved],
            sorted((str(Path(p).relative_to(root)) if p.startswith(str(root)) else p, why)
                   for p, why in m.skipped))


# name: fingerprint, task and classes, split counts, [split seed, fractions, repairs, copies moved], skipped
EXPECTED = {
    "class_folders": (
        "b85e9285787a4b8f", "multiclass", ["a", "b", "c"], {"test": 3, "train": 12, "val": 6},
        [0, [0.7, 0.15, 0.15], 1, 0],
        [("cf/a/notes.txt", "not an image file (extension)"),
         ("cf/empty", "class folder without images"),
         ("cf/stray.png", "file outside the class folders")],
    ),
    "split_folders": (
        "bcf2cffaa907a7cd", "multiclass", ["a", "b", "c"], {"pred": 3, "test": 7, "train": 20, "val": 4},
        [3, [0.8, 0.2, 0.0], 2, 0], [],
    ),
    "csv_single": (
        "86891d08a3fca9cf", "multiclass", ["bird", "cat", "dog"],
        {"test": 4, "train": 12, "unlabeled": 2, "val": 6},
        [1, [0.6, 0.2, 0.2], 2, 1],
        [("img/3.jpg", "duplicate of line 5"),
         ("img/missing.jpg", "file not found")],
    ),
    "csv_split_multilabel": (
        "983ad85b517f9795", "multilabel", ["sea", "sky", "tree"], {"pred": 2, "test": 4, "train": 19, "val": 5},
        [0, [0.85, 0.0, 0.15], 2, 0], [],
    ),
    "csv_onehot": (
        "f592b93e99eb775c", "multilabel", ["red", "round"], {"test": 2, "train": 14, "val": 4},
        [7, [0.7, 0.15, 0.15], 1, 0], [],
    ),
    "label_lists": (
        "97d749ae40bee4fe", "multilabel", ["flower", "night", "people"], {"test": 3, "train": 18, "val": 5},
        [0, [0.7, 0.15, 0.15], 2, 1],
        [("40", "image file missing")],
    ),
    "npz_plain": (
        "d9262e5409aba1c3", "multiclass", ["0", "1", "2"], {"test": 8, "train": 16, "unlabeled": 2, "val": 4},
        [0, [0.7, 0.15, 0.15], 1, 1], [],
    ),
    "npz_split": (
        "3563bf8d8e8cdfe7", "multiclass", ["x", "y", "z"], {"extra": 2, "test": 3, "train": 15, "val": 4},
        [2, [0.85, 0.0, 0.15], 3, 0], [],
    ),
    "npz_multilabel": (
        "121b5dbf7bed08db", "multilabel", ["u", "v", "w"], {"test": 5, "train": 12, "val": 3},
        [0, [0.7, 0.15, 0.15], 2, 0], [],
    ),
}


@pytest.mark.parametrize("make", [class_folders, split_folders, csv_single, csv_split_multilabel, csv_onehot,
                                  label_lists, npz_plain, npz_split, npz_multilabel], ids=lambda f: f.__name__)
def test_each_source_makes_the_manifest_it_always_made(tmp_path, make):
    path, options = make(tmp_path)
    got = _summary(load_dataset(path, **options), tmp_path.resolve())
    assert got == EXPECTED[make.__name__]
