"""Hugging Face ``datasets`` as a source: a ``save_to_disk`` folder, or ``hf:NAME[:CONFIG]`` from the Hub.

The dataset's own splits are kept (``validation`` -> val; other names are unlabeled splits), its
``ClassLabel`` column gives single-label classes and a list of ``ClassLabel`` multilabel ones. Each
image's bytes are written once to ``<cache_dir>/images/`` under their sha1, so the manifest holds plain
file paths that every stage reads (and decodes with featpipe's own decoder: a broken image is a failed
row). The source identity records each split's ``datasets`` fingerprint, so a new revision of the
dataset gets a new cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.data.images import IMAGE_EXTENSIONS
from featpipe.data.manifest import Manifest
from featpipe.data.sources._finish import DEFAULT_FRACTIONS, finish, task_for
from featpipe.data.sources._scan import normalize_split_name
from featpipe.errors import DatasetError, import_optional

HF_PREFIX = "hf:"
HUB_HOST = "huggingface.co"
IMAGES_FOLDER = "images"


def is_hf_source(path: str | Path) -> bool:
    """``hf:NAME[:CONFIG]``, or a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    if str(path).startswith(HF_PREFIX):
        return True
    p = Path(path).expanduser()
    return (p / "dataset_dict.json").is_file() or (
        (p / "state.json").is_file() and (p / "dataset_info.json").is_file()
    )


def _datasets() -> Any:
    return import_optional("datasets", "hf", "reading Hugging Face datasets")


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """``datasets``' own offline mode for one call: a cached copy loads, anything else fails at once
    (it reads its switch when imported, so FEATPIPE_OFFLINE or an unreachable Hub flips it here)."""
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


def _load_hub(datasets: Any, repo: str, config: str | None) -> Any:
    from featpipe.hardware import reachable

    what = f"Hugging Face dataset {repo!r}" + (f" (config {config!r})" if config else "")
    offline = bool(datasets.config.HF_HUB_OFFLINE) or os.environ.get("FEATPIPE_OFFLINE") == "1"
    why = "offline mode is set" if offline else ""
    if not offline and not reachable(HUB_HOST):
        offline, why = True, f"{HUB_HOST} cannot be reached"
    try:
        with _offline(datasets) if offline else contextlib.nullcontext():
            return datasets.load_dataset(repo, config)
    except Exception as e:  # noqa: BLE001 - network, missing repo or config: one line, not a traceback
        detail = (why + " and it is not in the Hugging Face cache") if why else str(e).splitlines()[0][:200]
        raise DatasetError(
            f"{what} cannot be loaded: {detail}; save_to_disk it on a connected machine and pass the folder"
        ) from None


def _load_disk(datasets: Any, folder: Path) -> Any:
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as e:  # noqa: BLE001 - a damaged or foreign folder: one line
        raise DatasetError(f"{folder}: cannot read the saved Hugging Face dataset ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def _class_label(datasets: Any, feature: Any) -> tuple[Any, bool] | None:
    """``(ClassLabel, multilabel)`` for a ClassLabel column or a list of ClassLabel, else ``None``."""
    if isinstance(feature, datasets.ClassLabel):
        return feature, False
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel) and not isinstance(feature, dict):
        return inner, True
    return None


def _pick(found: list[str], wanted: str | None, kind: str, option: str, where: str, columns: list[str],
          prefer: Sequence[str] = ()) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DatasetError(f"{where}: no column {wanted!r} (columns: {', '.join(columns)})")
        if wanted not in found:
            raise DatasetError(f"{where}: column {wanted!r} is not of type {kind}")
        return wanted
    if len(found) > 1:
        preferred = [c for c in found if c in prefer]
        if len(preferred) == 1:
            return preferred[0]
        raise DatasetError(f"{where}: several columns of type {kind} ({', '.join(found)}); pass {option}")
    if not found:
        hint = ("; Dataset.class_encode_column turns a column of class names or ids into one"
                if "ClassLabel" in kind else "")
        raise DatasetError(f"{where}: no column of type {kind} (columns: {', '.join(columns)}){hint}")
    return found[0]


def _columns(datasets: Any, features: Any, image_col: str | None, label_col: str | None,
             where: str) -> tuple[str, str, Any, bool]:
    """The image column, the label column, its ClassLabel and whether it is multilabel."""
    columns = list(features)
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    img = _pick(images, image_col, "Image", "--path-col (image_col)", where, columns)
    labels = [k for k, f in features.items() if _class_label(datasets, f) is not None]
    lab = _pick(labels, label_col, "ClassLabel (or a list of ClassLabel)", "--label-col (label_col)", where,
                columns, prefer=("label", "labels"))
    cl, multi = _class_label(datasets, features[lab])
    return img, lab, cl, multi


def _store(data: bytes, folder: Path, suffix: str) -> str:
    """Write ``data`` once to ``folder/<sha1[:2]>/<sha1><suffix>`` (atomically); its path."""
    digest = hashlib.sha1(data).hexdigest()  # the content hash the feature cache keeps per row
    p = folder / digest[:2] / (digest + suffix)
    if not (p.is_file() and p.stat().st_size == len(data)):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, p)
    return str(p)


def _image_path(value: Any, folder: Path) -> str | None:
    """A file path for one undecoded Image value (its bytes stored, or its own existing file)."""
    if not value:
        return None
    data, path = value.get("bytes"), value.get("path")
    if data is not None:
        suffix = Path(path).suffix.lower() if path else ""
        return _store(data, folder, suffix if suffix in IMAGE_EXTENSIONS else "")
    if path and os.path.isfile(path):
        return os.path.abspath(path)
    return None


def _check_indices(ys: Sequence[int], n_classes: int, where: str, row_id: str) -> None:
    bad = [j for j in ys if not 0 <= j < n_classes]
    if bad:
        raise DatasetError(f"{where}: row {row_id}: label {bad[0]} is not one of the {n_classes} classes")


def from_hf(
    source: str | Path,
    *,
    config: str | None = None,
    image_col: str | None = None,
    label_col: str | None = None,
    cache_dir: str | Path = "cache",
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Manifest:
    """A Hugging Face image classification dataset: ``hf:NAME[:CONFIG]`` (``datasets.load_dataset``) or a
    ``save_to_disk`` folder. Its train/validation/test splits are kept (a missing val or test split is
    carved out of train as for split folders); a label of -1 is an unlabeled row. Image bytes go to
    ``cache_dir/images/`` (content-addressed); rows without an image are skipped (recorded)."""
    datasets = _datasets()
    text = str(source)
    if text.startswith(HF_PREFIX):
        repo, _, cfg = text[len(HF_PREFIX):].partition(":")
        if not repo:
            raise DatasetError(f"expected hf:NAME[:CONFIG], got {text!r}")
        config = cfg or config
        where = HF_PREFIX + repo + (f":{config}" if config else "")
        loaded = _load_hub(datasets, repo, config)
        default_name = repo.split("/")[-1] + (f"-{config}" if config else "")
    else:
        folder = Path(source).expanduser().resolve()
        where = str(folder)
        loaded = _load_disk(datasets, folder)
        default_name = folder.name
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {str(loaded.split or "train"): loaded}
    if not parts:
        raise DatasetError(f"{where}: the dataset has no splits")
    first = next(iter(parts.values()))
    img, lab, class_label, multi = _columns(datasets, first.features, image_col, label_col, where)
    for split_name, part in parts.items():
        if part.features != first.features:
            raise DatasetError(f"{where}: split {split_name!r} has other columns than the others")

    folder_out = Path(cache_dir).expanduser().resolve() / IMAGES_FOLDER
    n_classes = class_label.num_classes
    ids: list[str] = []
    paths: list[str] = []
    splits: list[str] = []
    rows: list[Any] = []
    skipped: list[tuple[str, str]] = []
    for split_name, part in parts.items():
        split = normalize_split_name(split_name)
        view = part.select_columns([img, lab]).cast_column(img, datasets.Image(decode=False))
        k = 0
        for batch in view.iter(batch_size=256):
            for value, y in zip(batch[img], batch[lab], strict=True):
                row_id = f"{split_name}/{k}"
                k += 1
                path = _image_path(value, folder_out)
                if path is None:
                    skipped.append((row_id, "no image" if not value else "image file missing"))
                    continue
                ids.append(row_id)
                paths.append(path)
                splits.append(split)
                rows.append(y)
    if not ids:
        raise DatasetError(f"{where}: no images")

    in_labeled_split = np.array([s in ("train", "val", "test") for s in splits], dtype=bool)
    if multi:
        task = "multilabel"
        labels = np.zeros((len(ids), n_classes), dtype=np.uint8)
        for r, ys in enumerate(rows):
            _check_indices(ys or [], n_classes, where, ids[r])
            labels[r, list(ys or [])] = 1
        labeled = in_labeled_split
    else:
        task = task_for(n_classes, where)
        labels = np.array([-1 if y is None else int(y) for y in rows], dtype=np.int64)
        for r in np.flatnonzero(labels >= n_classes):
            _check_indices([int(labels[r])], n_classes, where, ids[r])
        labeled = in_labeled_split & (labels >= 0)
        labels[~labeled] = -1
    if not labeled[np.array([s == "train" for s in splits])].any():
        raise DatasetError(f"{where}: no labeled train split (splits: {', '.join(parts)})")
    splits = [s if ok or not lab_split else "unlabeled"
              for s, ok, lab_split in zip(splits, labeled, in_labeled_split, strict=True)]
    source_id = where + "@" + ",".join(f"{s}={p._fingerprint}" for s, p in parts.items())
    return finish(
        name=name or default_name, source=source_id, ids=ids, paths=paths, labels=labels, labeled=labeled,
        task=task, classes=[str(c) for c in class_label.names], fractions=fractions, seed=seed, splits=splits,
        val_fraction=val_fraction, skipped=skipped,
    )
