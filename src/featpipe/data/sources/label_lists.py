"""Multilabel datasets kept as one id list per label: ``annotations/<label>.txt`` beside ``images/``."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featpipe.data.manifest import Manifest
from featpipe.data.sources._finish import DEFAULT_FRACTIONS, finish
from featpipe.data.sources._scan import existing_dir, is_hidden, is_image_name, unique_ids
from featpipe.data.splitting import check_fractions
from featpipe.errors import DatasetError


def _read_lists(ann: Path) -> tuple[list[str], dict[str, list[int]]]:
    """The classes (one per ``<label>.txt``) and, per listed id, the indices of the lists naming it."""
    label_files = sorted(
        p for p in ann.iterdir() if p.is_file() and p.suffix.lower() == ".txt" and not is_hidden(p.name)
    )
    if not label_files:
        raise DatasetError(f"no <label>.txt files in {ann}")
    classes = [p.stem for p in label_files]
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{ann}: two label files with the same name")
    listed: dict[str, list[int]] = {}
    for j, p in enumerate(label_files):
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{p}: cannot read label list ({e})") from None
        for tok in text.split():
            labs = listed.setdefault(tok, [])
            if not labs or labs[-1] != j:
                labs.append(j)
    return classes, listed


def _ids_with_images(
    listed: dict[str, list[int]], img_dir: Path, pattern: str, include_unlisted: bool,
    skipped: list[tuple[str, str]],
) -> list[str]:
    """Listed ids whose image exists (the others go to ``skipped``), plus unlisted images when asked."""
    pre, post = pattern.split("{id}", 1)
    flat = "/" not in pattern and os.sep not in pattern
    files = {f for f in os.listdir(img_dir) if not is_hidden(f)} if flat else set()

    def exists(fname: str) -> bool:
        return fname in files if flat else (img_dir / fname).is_file()

    ids_present: list[str] = []
    for i in listed:
        if exists(pattern.format(id=i)):
            ids_present.append(i)
        else:
            skipped.append((i, "image file missing"))
    if include_unlisted and flat:
        rx = re.compile(re.escape(pre) + r"(.+?)" + re.escape(post) + r"\Z")
        for f in sorted(files):
            m = rx.match(f)
            if m and m.group(1) not in listed:
                if is_image_name(f) or not is_image_name(post or "x.jpg"):
                    ids_present.append(m.group(1))
    if not ids_present:
        raise DatasetError(
            f"none of the {len(listed)} listed ids has an image in {img_dir} (pattern {pattern!r})"
        )
    if all(i.isdigit() for i in ids_present):
        ids_present.sort(key=int)
    else:
        ids_present.sort()
    return ids_present


def from_label_lists(
    annotations_dir: str | Path,
    images_dir: str | Path,
    *,
    pattern: str = "im{id}.jpg",
    include_unlisted: bool = True,
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> Manifest:
    """Multilabel: ``annotations_dir/<label>.txt`` lists image ids (one per line), images at
    ``images_dir/pattern.format(id=...)``. Listed ids without an image file are skipped (recorded);
    images in no list are genuine negatives (all-zero labels) when ``include_unlisted``. Split with
    iterative stratification."""
    ann = existing_dir(annotations_dir, "annotations folder")
    img_dir = existing_dir(images_dir, "images folder")
    if "{id}" not in pattern:
        raise DatasetError(f"image name pattern must contain '{{id}}', got {pattern!r}")
    fractions = check_fractions(fractions)
    classes, listed = _read_lists(ann)
    skipped: list[tuple[str, str]] = []
    ids_present = _ids_with_images(listed, img_dir, pattern, include_unlisted, skipped)
    labels = np.zeros((len(ids_present), len(classes)), dtype=np.uint8)
    for r, i in enumerate(ids_present):
        for j in listed.get(i, ()):
            labels[r, j] = 1
    rel = [pattern.format(id=i) for i in ids_present]
    together = ann.parent == img_dir.parent
    return finish(
        name=name or (img_dir.parent.name if together else img_dir.name),
        source=str(ann.parent if together else img_dir), ids=unique_ids(rel), paths=[str(img_dir / r) for r in rel],
        labels=labels, labeled=np.ones(len(rel), dtype=bool), task="multilabel", classes=classes,
        fractions=fractions, seed=seed, skipped=skipped,
    )
