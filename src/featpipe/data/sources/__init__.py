"""Dataset sources: class folders, split folders, CSV, per-label id lists, ``.npz`` arrays and Hugging Face
datasets.

Every source returns a :class:`~featpipe.data.manifest.Manifest` made by one finishing step
(``_finish.finish``); every user-fixable problem is a one-line :class:`~featpipe.errors.DatasetError`.
Files that cannot be used but do not make the dataset unusable (a non-image file in a class folder, an id
whose image is missing) are recorded in ``manifest.skipped`` as ``(path or id, reason)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from featpipe.data.images import IMAGE_EXTENSIONS
from featpipe.data.manifest import Manifest
from featpipe.data.sources._scan import is_hidden, normalize_split_name, subdirs
from featpipe.data.sources.csvfile import from_csv
from featpipe.data.sources.folders import from_class_folders, from_split_folders
from featpipe.data.sources.hf import HF_PREFIX, from_hf, is_hf_source
from featpipe.data.sources.label_lists import from_label_lists
from featpipe.data.sources.npz import from_npz
from featpipe.errors import DatasetError

__all__ = [
    "HF_PREFIX",
    "IMAGE_EXTENSIONS",
    "from_class_folders",
    "from_split_folders",
    "from_csv",
    "from_label_lists",
    "from_npz",
    "from_hf",
    "load_dataset",
    "detect_source",
    "normalize_split_name",
]


def _check_options(fn: Callable, options: dict, kind: str) -> None:
    params = inspect.signature(fn).parameters
    for k in options:
        if k not in params or params[k].kind not in (params[k].KEYWORD_ONLY, params[k].POSITIONAL_OR_KEYWORD):
            raise DatasetError(f"option {k!r} does not apply to {kind} datasets")


def _the_csv_in(folder: Path) -> list[Path]:
    return [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == ".csv" and not is_hidden(f.name)]


def detect_source(path: str | Path) -> str:
    """Which source :func:`load_dataset` uses: ``hf`` (``hf:NAME[:CONFIG]`` or a ``save_to_disk`` folder),
    ``npz``, ``csv``, ``label_lists``, ``split_folders``, ``class_folders``. Raises :class:`DatasetError`
    for a missing or unsupported path."""
    if str(path).startswith(HF_PREFIX):
        return "hf"
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset not found: {p}")
    if p.is_file():
        suf = p.suffix.lower()
        if suf == ".npz":
            return "npz"
        if suf in (".csv", ".tsv"):
            return "csv"
        raise DatasetError(f"unsupported dataset file {p.name!r} (expected a folder, .csv or .npz)")
    if is_hf_source(p):
        return "hf"
    subs = {d.name.lower(): d for d in subdirs(p)}
    ann, imgs = subs.get("annotations"), subs.get("images")
    if ann is not None and imgs is not None and any(f.suffix.lower() == ".txt" for f in ann.iterdir()):
        return "label_lists"
    if any(normalize_split_name(s) in ("train", "val", "test") for s in subs):
        return "split_folders"
    if not subs and len(_the_csv_in(p)) == 1:
        return "csv_in_folder"
    return "class_folders"


def load_dataset(path: str | Path, **options) -> Manifest:
    """Read any supported dataset, choosing the source from what ``path`` is (see :func:`detect_source`).

    ``options`` go to the chosen ``from_*`` function; one that does not apply is a :class:`DatasetError`.
    """
    kind = detect_source(path)
    if kind == "hf":
        if "path_col" in options:  # the CLI's --path-col names the image column of a Hugging Face dataset
            options["image_col"] = options.pop("path_col")
        _check_options(from_hf, options, "Hugging Face")
        return from_hf(path, **options)
    p = Path(path).expanduser()
    if kind == "npz":
        _check_options(from_npz, options, "npz")
        return from_npz(p, **options)
    if kind == "csv":
        _check_options(from_csv, options, "csv")
        return from_csv(p, **options)
    if kind == "csv_in_folder":
        _check_options(from_csv, options, "csv")
        options["name"] = options.get("name") or p.resolve().name
        return from_csv(_the_csv_in(p)[0], **options)
    if kind == "label_lists":
        _check_options(from_label_lists, options, "label-list")
        subs = {d.name.lower(): d for d in subdirs(p)}
        options["name"] = options.get("name") or p.resolve().name
        return from_label_lists(subs["annotations"], subs["images"], **options)
    if kind == "split_folders":
        _check_options(from_split_folders, options, "split-folder")
        return from_split_folders(p, **options)
    _check_options(from_class_folders, options, "class-folder")
    return from_class_folders(p, **options)
