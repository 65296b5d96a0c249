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


def _open(datasets: Any, source: str | Path, config: str | None) -> tuple[str, str, dict[str, Any]]:
    """Where the dataset comes from (for messages and its identity), its default name, and its splits."""
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
        where, default_name = str(folder), folder.name
        loaded = _load_disk(datasets, folder)
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {str(loaded.split or "train"): loaded}
    if not parts:
        raise DatasetError(f"{where}: the dataset has no splits")
    return where, default_name, parts


def _rows(datasets: Any, parts: dict[str, Any], img: str, lab: str, folder: Path,
          skipped: list[tuple[str, str]]) -> tuple[list[str], list[str], list[str], list[Any]]:
    """Ids (``<split>/<row>``), image paths, split names and raw labels of the rows that have an image."""
    ids: list[str] = []
    paths: list[str] = []
    splits: list[str] = []
    labels: list[Any] = []
    for split_name, part in parts.items():
        split = normalize_split_name(split_name)
        view = part.select_columns([img, lab]).cast_column(img, datasets.Image(decode=False))
        k = 0
        for batch in view.iter(batch_size=256):
            for value, y in zip(batch[img], batch[lab], strict=True):
                row_id = f"{split_name}/{k}"
                k += 1
                path = _image_path(value, folder)
                if path is None:
                    skipped.append((row_id, "no image" if not value else "image file missing"))
                    continue
                ids.append(row_id)
                paths.append(path)
                splits.append(split)
                labels.append(y)
    return ids, paths, splits, labels


def _check_indices(ys: Sequence[int], n_classes: int, where: str, row_id: str) -> None:
    bad = [j for j in ys if not 0 <= j < n_classes]
    if bad:
        raise DatasetError(f"{where}: row {row_id}: label {bad[0]} is not one of the {n_classes} classes")


def _labels(raw: list[Any], ids: list[str], labeled_split: np.ndarray, n_classes: int, multi: bool,
            where: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Task, labels (class indices, or multi-hot) and which rows are labeled (-1 or another split: not)."""
    if multi:
        labels = np.zeros((len(raw), n_classes), dtype=np.uint8)
        for r, ys in enumerate(raw):
            _check_indices(ys or [], n_classes, where, ids[r])
            labels[r, list(ys or [])] = 1
        labels[~labeled_split] = 0
        return "multilabel", labels, labeled_split
    task = task_for(n_classes, where)
    y = np.array([-1 if v is None else int(v) for v in raw], dtype=np.int64)
    for r in np.flatnonzero(y >= n_classes):
        _check_indices([int(y[r])], n_classes, where, ids[r])
    labeled = labeled_split & (y >= 0)
    y[~labeled] = -1
    return task, y, labeled


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
    where, default_name, parts = _open(datasets, source, config)
    first = next(iter(parts.values()))
    img, lab, class_label, multi = _columns(datasets, first.features, image_col, label_col, where)
    for split_name, part in parts.items():
        if part.features != first.features:
            raise DatasetError(f"{where}: split {split_name!r} has other columns than the others")
    skipped: list[tuple[str, str]] = []
    folder = Path(cache_dir).expanduser().resolve() / IMAGES_FOLDER
    ids, paths, splits, raw = _rows(datasets, parts, img, lab, folder, skipped)
    if not ids:
        raise DatasetError(f"{where}: no images")
    labeled_split = np.array([s in ("train", "val", "test") for s in splits], dtype=bool)
    task, labels, labeled = _labels(raw, ids, labeled_split, class_label.num_classes, multi, where)
    if not labeled[np.array([s == "train" for s in splits])].any():
        raise DatasetError(f"{where}: no labeled train split (splits: {', '.join(parts)})")
    splits = [s if ok or not in_labeled else "unlabeled"
              for s, ok, in_labeled in zip(splits, labeled, labeled_split, strict=True)]
    source_id = where + "@" + ",".join(f"{s}={p._fingerprint}" for s, p in parts.items())
    return finish(
        name=name or default_name, source=source_id, ids=ids, paths=paths, labels=labels, labeled=labeled,
        task=task, classes=[str(c) for c in class_label.names], fractions=fractions, seed=seed, splits=splits,
        val_fraction=val_fraction, skipped=skipped,
    )
