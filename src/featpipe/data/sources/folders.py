"""Image folders: ``root/<class>/*`` (featpipe splits them) and ``root/<split>/<class>/*`` (their own split)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featpipe.data.manifest import Manifest
from featpipe.data.sources._finish import DEFAULT_FRACTIONS, class_indices, finish
from featpipe.data.sources._scan import (
    existing_dir,
    is_hidden,
    normalize_split_name,
    scan_images,
    subdirs,
    unique_ids,
)
from featpipe.data.splitting import check_fractions
from featpipe.errors import DatasetError


def _class_folder_rows(folder: Path, skipped: list[tuple[str, str]]) -> tuple[list[Path], list[str]] | None:
    """Images of ``folder/<class>/**``: (paths, class names), or ``None`` if it has no class subfolders
    holding images. Images directly inside ``folder`` next to class folders are skipped."""
    paths: list[Path] = []
    names: list[str] = []
    local_skipped: list[tuple[str, str]] = []
    for sub in subdirs(folder):
        imgs = scan_images(sub, local_skipped)
        if not imgs:
            local_skipped.append((str(sub), "class folder without images"))
            continue
        paths.extend(imgs)
        names.extend([sub.name] * len(imgs))
    if not paths:
        return None
    skipped.extend(local_skipped)
    for f in sorted(folder.iterdir()):
        if f.is_file() and not is_hidden(f.name):
            skipped.append((str(f), "file outside the class folders"))
    return paths, names


def from_class_folders(
    root: str | Path,
    *,
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> Manifest:
    """``root/<class>/*`` images (any depth below the class folder), split stratified with ``fractions``."""
    root = existing_dir(root, "dataset folder")
    fractions = check_fractions(fractions)
    skipped: list[tuple[str, str]] = []
    rows = _class_folder_rows(root, skipped)
    if rows is None:
        raise DatasetError(f"no images found in class folders under {root} (expected <root>/<class>/<image>)")
    paths, names = rows
    classes, labels, task = class_indices(names, str(root))
    return finish(
        name=name or root.name, source=str(root), ids=unique_ids([os.path.relpath(p, root) for p in paths]),
        paths=[str(p) for p in paths], labels=labels, labeled=np.ones(len(paths), dtype=bool), task=task,
        classes=classes, fractions=fractions, seed=seed, skipped=skipped,
    )


def from_split_folders(
    root: str | Path,
    *,
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Manifest:
    """``root/<split>/<class>/*``. Split folders ``train``, ``val|valid|validation``, ``test`` are labeled.

    A folder with images directly inside (no class folders), e.g. ``pred/``, is unlabeled and keeps its
    folder name as split name (``<name>_unlabeled`` if that name is train/val/test). A missing val split
    is carved out of train (stratified, ``seed``) with ``val_fraction`` of the train images (default: the
    val share of ``fractions``); a missing test split likewise with the test share of ``fractions``.
    """
    root = existing_dir(root, "dataset folder")
    skipped: list[tuple[str, str]] = []
    paths: list[Path] = []
    split_of: list[str] = []
    class_of: list[str | None] = []
    for d in subdirs(root):
        split = normalize_split_name(d.name)
        rows = _class_folder_rows(d, skipped) if split in ("train", "val", "test") else None
        if rows is not None:
            paths.extend(rows[0])
            class_of.extend(rows[1])
            split_of.extend([split] * len(rows[0]))
            continue
        imgs = scan_images(d, skipped)
        if not imgs:
            skipped.append((str(d), "folder without images"))
            continue
        uname = f"{d.name}_unlabeled" if split in ("train", "val", "test") else d.name
        paths.extend(imgs)
        class_of.extend([None] * len(imgs))
        split_of.extend([uname] * len(imgs))
    for f in sorted(root.iterdir()):
        if f.is_file() and not is_hidden(f.name):
            skipped.append((str(f), "file outside the split folders"))
    if not paths:
        raise DatasetError(f"no images found under {root} (expected <root>/<split>/<class>/<image>)")
    if "train" not in split_of:
        raise DatasetError(f"{root}: no labeled train folder (expected {root}/train/<class>/<image>)")
    classes, labels, task = class_indices(class_of, str(root))
    return finish(
        name=name or root.name, source=str(root), ids=unique_ids([os.path.relpath(p, root) for p in paths]),
        paths=[str(p) for p in paths], labels=labels, labeled=labels >= 0, task=task, classes=classes,
        fractions=fractions, seed=seed, splits=split_of, val_fraction=val_fraction, skipped=skipped,
    )
