"""Dataset sources: class folders, split folders, CSV, per-label id lists and ``.npz`` arrays.

Every source returns a :class:`~featpipe.data.manifest.Manifest`; every user-fixable problem is a
one-line :class:`~featpipe.errors.DatasetError`. Files that cannot be used but do not make the dataset
unusable (a non-image file in a class folder, an id whose image is missing) are recorded in
``manifest.skipped`` as ``(path or id, reason)``.
"""

from __future__ import annotations

import csv
import inspect
import io
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from featpipe.data.duplicates import content_keys
from featpipe.data.images import IMAGE_EXTENSIONS
from featpipe.data.manifest import Manifest
from featpipe.data.splitting import assign_splits, check_fractions
from featpipe.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "from_class_folders",
    "from_split_folders",
    "from_csv",
    "from_label_lists",
    "from_npz",
    "load_dataset",
    "detect_source",
    "normalize_split_name",
]

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
_JUNK_DIRS = {"__macosx", "__pycache__"}


def normalize_split_name(name: str) -> str:
    """``train``/``training`` -> train, ``val``/``valid``/``validation``/``dev`` -> val, ``test``/``testing``
    -> test (case-insensitive); any other name is returned stripped (an unlabeled split)."""
    s = str(name).strip()
    return _SPLIT_ALIASES.get(s.lower(), s)


# ----------------------------------------------------------------------------- helpers


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_FILES or name.lower() in _JUNK_DIRS


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _scan_images(d: Path, skipped: list[tuple[str, str]], recursive: bool = True) -> list[Path]:
    """Image files under ``d`` (sorted); non-image files go to ``skipped``; hidden entries are ignored."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(x for x in dirnames if not _is_hidden(x)) if recursive else []
        for f in sorted(filenames):
            if _is_hidden(f):
                continue
            p = Path(dirpath) / f
            if _is_image_name(f):
                found.append(p)
            else:
                skipped.append((str(p), "not an image file (extension)"))
    return found


def _unique_ids(rels: Sequence[str]) -> list[str]:
    """Relative paths without extension (POSIX separators); keep the extension where that collides."""
    stems = [os.path.splitext(r)[0].replace(os.sep, "/") for r in rels]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    ids = [r.replace(os.sep, "/") if counts[s] > 1 else s for r, s in zip(rels, stems, strict=True)]
    if len(set(ids)) != len(ids):  # extremely unlikely (e.g. "a" file and "a.jpg" id); number them
        seen: dict[str, int] = {}
        out = []
        for i in ids:
            k = seen.get(i, 0)
            seen[i] = k + 1
            out.append(i if k == 0 else f"{i}#{k}")
        ids = out
    return ids


def _task_for(n_classes: int, where: str) -> str:
    if n_classes < 2:
        raise DatasetError(f"{where}: a classification dataset needs at least 2 classes, found {n_classes}")
    return "binary" if n_classes == 2 else "multiclass"


def _sort_class_names(names: set[str] | list[str]) -> list[str]:
    names = list(set(names))
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _existing_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{what} not found: {p}")
    if not p.is_dir():
        raise DatasetError(f"{what} is not a folder: {p}")
    return p.resolve()


def _fill_missing_splits(
    splits: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[str],
    task: str,
    fractions: Sequence[float],
    val_fraction: float | None,
    seed: int,
    content: Callable[[np.ndarray], list[str | None]],
) -> tuple[tuple[float, float, float] | None, int, int]:
    """Carve the missing val and/or test split out of the train rows, stratified and stable; in place.

    A missing val split takes ``val_fraction`` (default: the val share of ``fractions``) of the train
    rows, a missing test split the test share of ``fractions``. Copies among the train rows stay
    together (``content(rows)``: their content keys, see :func:`content_keys`). Returns the
    ``(train, val, test)`` fractions applied to the train rows (``None`` when nothing was carved), the
    repair count and the number of copies moved to their first copy's split.
    """
    fractions = check_fractions(fractions)
    present = set(splits.tolist())
    if "train" not in present:
        return None, 0, 0
    need_val, need_test = "val" not in present, "test" not in present
    if not (need_val or need_test):
        return None, 0, 0
    fv = fractions[1] if val_fraction is None else float(val_fraction)
    if not 0 <= fv < 1:
        raise DatasetError(f"val_fraction must be >= 0 and < 1, got {val_fraction}")
    fv = fv if need_val else 0.0
    ft = fractions[2] if need_test else 0.0
    if fv == 0 and ft == 0:
        return None, 0, 0
    fr = check_fractions((1.0 - fv - ft, fv, ft))
    tr = np.flatnonzero(splits == "train")
    res = assign_splits([ids[i] for i in tr], labels[tr], task, fr, seed, content(tr))
    splits[tr] = res.splits
    return fr, res.repairs, res.copies_moved


def _check_options(fn: Callable, options: dict, kind: str) -> None:
    params = inspect.signature(fn).parameters
    for k in options:
        if k not in params or params[k].kind not in (params[k].KEYWORD_ONLY, params[k].POSITIONAL_OR_KEYWORD):
            raise DatasetError(f"option {k!r} does not apply to {kind} datasets")


# ----------------------------------------------------------------------------- folders


def _class_folder_rows(
    base: Path, folder: Path, skipped: list[tuple[str, str]]
) -> tuple[list[Path], list[str]] | None:
    """Images of ``folder/<class>/**``: (paths, class names), or ``None`` if it has no class subfolders
    holding images. Images directly inside ``folder`` next to class folders are skipped."""
    paths: list[Path] = []
    names: list[str] = []
    local_skipped: list[tuple[str, str]] = []
    for sub in _subdirs(folder):
        imgs = _scan_images(sub, local_skipped)
        if not imgs:
            local_skipped.append((str(sub), "class folder without images"))
            continue
        paths.extend(imgs)
        names.extend([sub.name] * len(imgs))
    if not paths:
        return None
    skipped.extend(local_skipped)
    for f in sorted(folder.iterdir()):
        if f.is_file() and not _is_hidden(f.name):
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
    root = _existing_dir(root, "dataset folder")
    fractions = check_fractions(fractions)
    skipped: list[tuple[str, str]] = []
    rows = _class_folder_rows(root, root, skipped)
    if rows is None:
        raise DatasetError(f"no images found in class folders under {root} (expected <root>/<class>/<image>)")
    paths, names = rows
    classes = _sort_class_names(set(names))
    task = _task_for(len(classes), str(root))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    ids = _unique_ids([os.path.relpath(p, root) for p in paths])
    split = assign_splits(ids, labels, task, fractions, seed, content_keys([str(p) for p in paths]))
    return Manifest(
        name=name or root.name,
        source=str(root),
        ids=ids,
        paths=[str(p) for p in paths],
        splits=[str(s) for s in split.splits],
        labels=labels,
        labeled=np.ones(len(paths), dtype=bool),
        task=task,
        classes=classes,
        split_seed=seed,
        split_fractions=fractions,
        split_repairs=split.repairs,
        split_copies_moved=split.copies_moved,
        skipped=skipped,
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
    root = _existing_dir(root, "dataset folder")
    skipped: list[tuple[str, str]] = []
    paths: list[Path] = []
    split_of: list[str] = []
    class_of: list[str | None] = []
    for d in _subdirs(root):
        split = normalize_split_name(d.name)
        rows = _class_folder_rows(root, d, skipped) if split in ("train", "val", "test") else None
        if rows is not None:
            paths.extend(rows[0])
            class_of.extend(rows[1])
            split_of.extend([split] * len(rows[0]))
            continue
        imgs = _scan_images(d, skipped)
        if not imgs:
            skipped.append((str(d), "folder without images"))
            continue
        uname = f"{d.name}_unlabeled" if split in ("train", "val", "test") else d.name
        paths.extend(imgs)
        class_of.extend([None] * len(imgs))
        split_of.extend([uname] * len(imgs))
    for f in sorted(root.iterdir()):
        if f.is_file() and not _is_hidden(f.name):
            skipped.append((str(f), "file outside the split folders"))
    if not paths:
        raise DatasetError(f"no images found under {root} (expected <root>/<split>/<class>/<image>)")
    if "train" not in split_of:
        raise DatasetError(f"{root}: no labeled train folder (expected {root}/train/<class>/<image>)")

    classes = _sort_class_names({c for c in class_of if c is not None})
    task = _task_for(len(classes), str(root))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([-1 if c is None else index[c] for c in class_of], dtype=np.int64)
    labeled = labels >= 0
    splits = np.array(split_of, dtype=object)
    ids = _unique_ids([os.path.relpath(p, root) for p in paths])
    lab_idx = np.flatnonzero(labeled)
    sub = splits[lab_idx].astype(str)
    fr, repairs, copies = _fill_missing_splits(
        sub, labels[lab_idx], [ids[i] for i in lab_idx], task, fractions, val_fraction, seed,
        lambda sel: content_keys([str(paths[lab_idx[i]]) for i in sel]),
    )
    splits[lab_idx] = sub
    return Manifest(
        name=name or root.name,
        source=str(root),
        ids=ids,
        paths=[str(p) for p in paths],
        splits=[str(s) for s in splits],
        labels=labels,
        labeled=labeled,
        task=task,
        classes=classes,
        split_seed=seed if fr is not None else None,
        split_fractions=fr,
        split_repairs=repairs,
        split_copies_moved=copies,
        skipped=skipped,
    )


# ----------------------------------------------------------------------------- CSV

_PATH_COLS = ("path", "filepath", "file_path", "image_path", "img_path", "image", "img", "file", "filename")
_LABEL_COLS = ("label", "labels", "class", "classes", "category", "target", "tags", "tag", "attributes")
_SPLIT_COLS = ("split", "subset", "set", "fold")
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


def _find_col(
    header: list[str],
    wanted: str | None,
    candidates: Sequence[str],
    what: str,
    csv_path: Path,
    required: bool,
    option: str = "",
) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.strip().lower() in lower:
            return lower[wanted.strip().lower()]
        raise DatasetError(f"{csv_path}: no column {wanted!r} for the {what} (columns: {', '.join(header)})")
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise DatasetError(
            f"{csv_path}: cannot tell which column holds the {what}; pass it explicitly"
            f"{' with ' + option if option else ''} (columns: {', '.join(header)})"
        )
    return None


def _read_csv(csv_path: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """Header, rows (stripped cells) and the line each row ends on; the dialect is sniffed."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{csv_path}: not a UTF-8 text file") from None
    except OSError as e:
        raise DatasetError(f"{csv_path}: cannot read ({e.strerror or e})") from None
    if not text.strip() or not text.lstrip("\r\n").splitlines()[0].strip():
        raise DatasetError(f"{csv_path}: empty CSV file")
    dialect: type[csv.Dialect] | csv.Dialect
    if csv_path.suffix.lower() == ".tsv":
        dialect = csv.excel_tab
    else:
        sample = "".join(text.splitlines(keepends=True)[:200])[:1 << 16]
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:  # one column, or nothing regular enough: the standard comma dialect
            dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows, lines = [], []
        for r in reader:
            if None in r:  # more cells than header columns
                raise DatasetError(f"{csv_path}: line {reader.line_num}: more cells than header columns")
            rows.append({k: (v or "").strip() for k, v in r.items()})
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DatasetError(f"{csv_path}: line {reader.line_num}: {e}") from None
    if len(header) != len(set(header)):
        raise DatasetError(f"{csv_path}: duplicate column names in the header")
    return header, rows, lines


_AUTO_SEPS = (";", "|", ",")
_WHITESPACE_SEPS = {"space", "spaces", "whitespace"}


def _normalize_label_sep(sep: str | None) -> str | None:
    """``None`` (detect), ``"none"`` (one label per cell), ``" "`` (whitespace) or the separator."""
    if sep is None:
        return None
    if sep.strip() == "" or sep.strip().lower() in _WHITESPACE_SEPS:
        return " "
    return "none" if sep.strip().lower() == "none" else sep


def _split_cell(v: str, sep: str) -> list[str]:
    parts = v.split() if sep == " " else [p.strip() for p in v.split(sep)]
    return list(dict.fromkeys(p for p in parts if p))


def _detect_label_sep(cells: list[tuple[int, str]], lcol: str, csv_path: Path) -> str:
    """The label separator of a one-column label field, or ``"none"`` when it is single-label.

    ``;``, ``|`` and ``,`` are detected when exactly one of them occurs; whitespace never is (class
    names may hold spaces), but a cell made only of other cells' whole labels ("cat dog") stops.
    """
    found = [sep for sep in _AUTO_SEPS if any(sep in v for _, v in cells)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        ln, v = next((ln, v) for ln, v in cells if found[1] in v)
        raise DatasetError(
            f"{csv_path}: label column {lcol!r} looks multi-label but the separator is ambiguous "
            f"({' and '.join(repr(x) for x in found)} both occur, e.g. line {ln}: {v!r}); pass --label-sep "
            "with the separator, or --label-sep none for one label per cell"
        )
    singles = {v for _, v in cells if len(v.split()) == 1}
    for ln, v in cells:
        toks = v.split()
        if len(toks) >= 2 and all(t in singles for t in toks):
            raise DatasetError(
                f"{csv_path}: label column {lcol!r} looks multi-label with labels separated by spaces "
                f"(line {ln}: {v!r}); pass --label-sep ' ' for that, or --label-sep none for one label per cell"
            )
    return "none"


def from_csv(
    csv_path: str | Path,
    *,
    path_col: str | None = None,
    label_col: str | None = None,
    label_sep: str | None = None,
    label_cols: Sequence[str] | None = None,
    split_col: str | None = None,
    id_col: str | None = None,
    unlabeled_empty: bool = False,
    root: str | Path | None = None,
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Manifest:
    """A CSV with one row per image.

    The dialect (delimiter, quoting) is sniffed with :class:`csv.Sniffer` (``.tsv``: tabs). Columns
    (auto-detected when not given, case-insensitive): the image path (``path``, ``filepath``, ``image``,
    ``file``, ...; relative paths resolve against ``root`` or the CSV's folder); either one label column
    (``label``, ``labels``, ``class``, ``tags``, ...) or several 0/1 columns ``label_cols`` (multilabel;
    auto: every other column when all hold only 0/1); an optional ``split`` column (train/val/test,
    other values are unlabeled rows; without it the rows get a stable stratified split with
    ``fractions``; a missing val/test split is carved out of train as in :func:`from_split_folders`).

    A label column is multilabel when ``label_sep`` is given (``" "``/``"space"``: whitespace; ``"none"``:
    one label per cell) or when exactly one of ``;`` ``|`` ``,`` occurs in its cells; a column that looks
    multilabel with an ambiguous separator is an error naming ``--label-sep``. In a multilabel column an
    empty cell is an image with no labels; in a single-label column it is an error, or an unlabeled row
    with ``unlabeled_empty``. Bad cells and conflicting duplicate rows raise :class:`DatasetError` naming
    the line; missing image files are skipped unless all are.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"CSV file not found: {csv_path}")
    csv_path = csv_path.resolve()
    base = Path(root).expanduser().resolve() if root is not None else csv_path.parent
    if root is not None and not base.is_dir():
        raise DatasetError(f"image root folder not found: {base}")
    header, rows, line = _read_csv(csv_path)
    if not rows:
        raise DatasetError(f"{csv_path}: no rows below the header")

    pcol = _find_col(header, path_col, _PATH_COLS, "image paths", csv_path, required=True, option="--path-col")
    scol = _find_col(header, split_col, _SPLIT_COLS, "split", csv_path, required=False)
    icol = _find_col(header, id_col, (), "ids", csv_path, required=False) if id_col else None
    used = {pcol, scol, icol} - {None}

    multi_cols: list[str] | None = None
    lcol: str | None = None
    sep = _normalize_label_sep(label_sep)
    if label_cols is not None:
        multi_cols = [_find_col(header, c, (), "labels", csv_path, required=True) for c in label_cols]  # type: ignore[misc]
        if not multi_cols:
            raise DatasetError(f"{csv_path}: label_cols is empty")
    elif label_col is not None:
        lcol = _find_col(header, label_col, (), "labels", csv_path, required=True)
    else:
        lcol = _find_col(header, None, _LABEL_COLS, "labels", csv_path, required=False)
        if lcol is None:
            rest = [h for h in header if h not in used]
            if len(rest) >= 2 and all(r[h].lower() in _TRUE | _FALSE for r in rows for h in rest):
                multi_cols = rest
            elif len(rest) == 1:  # the only other column
                lcol = rest[0]
            else:
                raise DatasetError(
                    f"{csv_path}: cannot find the label column; pass --label-col (label_col; or label_cols "
                    f"for 0/1 columns) (columns: {', '.join(header)})"
                )

    # ---- per-row values
    n = len(rows)
    split_raw = [normalize_split_name(r[scol]) if scol else "train" for r in rows]
    for i, s in enumerate(split_raw):
        if scol and not s:
            raise DatasetError(f"{csv_path}: line {line[i]}: empty split cell in column {scol!r}")
    is_lab = np.array([s in ("train", "val", "test") for s in split_raw], dtype=bool)

    if multi_cols is not None:
        task = "multilabel"
        classes = list(multi_cols)
        labels = np.zeros((n, len(classes)), dtype=np.uint8)
        for i, r in enumerate(rows):
            for j, c in enumerate(classes):
                v = r[c].lower()
                if v in _TRUE:
                    labels[i, j] = 1
                elif v in _FALSE or (v == "" and not is_lab[i]):
                    continue
                elif v == "":
                    raise DatasetError(f"{csv_path}: line {line[i]}: empty cell in label column {c!r}")
                else:
                    raise DatasetError(
                        f"{csv_path}: line {line[i]}: label column {c!r} must hold 0 or 1, got {r[c]!r}"
                    )
    else:
        assert lcol is not None
        if sep is None:
            sep = _detect_label_sep(
                [(line[i], r[lcol]) for i, r in enumerate(rows) if is_lab[i] and r[lcol]], lcol, csv_path
            )
        cells: list[list[str] | None] = []
        for i, r in enumerate(rows):
            v = r[lcol]
            if not is_lab[i]:
                cells.append(None)
            elif sep != "none":
                cells.append(_split_cell(v, sep))  # an empty cell: an image with no labels
            elif v:
                cells.append([v])
            elif unlabeled_empty:
                is_lab[i] = False
                split_raw[i] = "unlabeled"
                cells.append(None)
            else:
                raise DatasetError(
                    f"{csv_path}: line {line[i]}: empty label in column {lcol!r}; pass --unlabeled-empty to "
                    "keep such rows unlabeled, or --label-sep if the column is multi-label"
                )
        classes = _sort_class_names({c for cs in cells if cs for c in cs})
        index = {c: k for k, c in enumerate(classes)}
        if sep != "none":
            task = "multilabel"
            if not classes:
                raise DatasetError(f"{csv_path}: label column {lcol!r} holds no label at all")
            labels = np.zeros((n, len(classes)), dtype=np.uint8)
            for i, cs in enumerate(cells):
                for c in cs or []:
                    labels[i, index[c]] = 1
        else:
            task = _task_for(len(classes), str(csv_path))
            labels = np.array([index[cs[0]] if cs else -1 for cs in cells], dtype=np.int64)

    # ---- paths, duplicates, missing files
    keep: list[int] = []
    skipped: list[tuple[str, str]] = []
    first_row: dict[str, int] = {}
    abs_paths: list[str] = []
    rels: list[str] = []
    for i, r in enumerate(rows):
        raw = r[pcol]
        if not raw:
            raise DatasetError(f"{csv_path}: line {line[i]}: empty image path in column {pcol!r}")
        p = Path(raw).expanduser()
        ap = p if p.is_absolute() else base / p
        key = os.path.normpath(str(ap))
        if key in first_row:
            j = first_row[key]
            same = split_raw[i] == split_raw[j] and np.array_equal(labels[i], labels[j])
            if not same:
                raise DatasetError(
                    f"{csv_path}: line {line[i]}: {raw!r} also on line {line[j]} with a different "
                    f"{'split' if np.array_equal(labels[i], labels[j]) else 'label'}"
                )
            skipped.append((raw, f"duplicate of line {line[j]}"))
            continue
        first_row[key] = i
        if not os.path.isfile(key):
            skipped.append((raw, "file not found"))
            continue
        keep.append(i)
        abs_paths.append(key)
        try:
            rels.append(os.path.relpath(key, base) if Path(key).is_relative_to(base) else raw)
        except ValueError:
            rels.append(raw)
    if not keep:
        n_missing = sum(1 for _, why in skipped if why == "file not found")
        raise DatasetError(
            f"{csv_path}: none of the {n_missing} image files exist (relative paths resolve against {base})"
        )
    k = np.array(keep, dtype=np.int64)
    labels = labels[k]
    labeled = is_lab[k]
    if icol:
        ids = [rows[i][icol] for i in keep]
        if any(not x for x in ids):
            bad = next(i for i in keep if not rows[i][icol])
            raise DatasetError(f"{csv_path}: line {line[bad]}: empty id in column {icol!r}")
        if len(set(ids)) != len(ids):
            seen: dict[str, int] = {}
            for i in keep:
                x = rows[i][icol]
                if x in seen:
                    raise DatasetError(
                        f"{csv_path}: line {line[i]}: id {x!r} already used on line {line[seen[x]]}"
                    )
                seen[x] = i
    else:
        ids = _unique_ids(rels)

    splits = np.array([split_raw[i] for i in keep], dtype=object)
    lab_idx = np.flatnonzero(labeled)
    split_seed: int | None = None
    split_fr: tuple[float, float, float] | None = None
    if lab_idx.size == 0:
        raise DatasetError(f"{csv_path}: no labeled rows (split values: {', '.join(sorted(set(split_raw)))})")
    lab_ids = [ids[i] for i in lab_idx]
    lab_paths = [abs_paths[i] for i in lab_idx]
    if scol is None:
        split_fr = check_fractions(fractions)
        res = assign_splits(lab_ids, labels[lab_idx], task, split_fr, seed, content_keys(lab_paths))
        splits[lab_idx] = res.splits
        split_seed, repairs, copies = seed, res.repairs, res.copies_moved
    else:
        sub = splits[lab_idx].astype(str)
        split_fr, repairs, copies = _fill_missing_splits(
            sub, labels[lab_idx], lab_ids, task, fractions, val_fraction, seed,
            lambda sel: content_keys([lab_paths[i] for i in sel]),
        )
        splits[lab_idx] = sub
        split_seed = seed if split_fr is not None else None
    return Manifest(
        name=name or csv_path.stem,
        source=str(csv_path),
        ids=ids,
        paths=abs_paths,
        splits=[str(s) for s in splits],
        labels=labels,
        labeled=labeled,
        task=task,
        classes=classes,
        split_seed=split_seed,
        split_fractions=split_fr,
        split_repairs=repairs,
        split_copies_moved=copies,
        skipped=skipped,
    )


# ----------------------------------------------------------------------------- label lists


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
    ann = _existing_dir(annotations_dir, "annotations folder")
    img_dir = _existing_dir(images_dir, "images folder")
    if "{id}" not in pattern:
        raise DatasetError(f"image name pattern must contain '{{id}}', got {pattern!r}")
    fractions = check_fractions(fractions)
    label_files = sorted(
        p for p in ann.iterdir() if p.is_file() and p.suffix.lower() == ".txt" and not _is_hidden(p.name)
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

    pre, post = pattern.split("{id}", 1)
    flat = "/" not in pattern and os.sep not in pattern
    files = {f for f in os.listdir(img_dir) if not _is_hidden(f)} if flat else set()

    def exists(fname: str) -> bool:
        return fname in files if flat else (img_dir / fname).is_file()

    ids_present: list[str] = []
    skipped: list[tuple[str, str]] = []
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
                if _is_image_name(f) or not _is_image_name(post or "x.jpg"):
                    ids_present.append(m.group(1))
    if not ids_present:
        raise DatasetError(
            f"none of the {len(listed)} listed ids has an image in {img_dir} (pattern {pattern!r})"
        )
    if all(i.isdigit() for i in ids_present):
        ids_present.sort(key=int)
    else:
        ids_present.sort()
    labels = np.zeros((len(ids_present), len(classes)), dtype=np.uint8)
    for r, i in enumerate(ids_present):
        for j in listed.get(i, ()):
            labels[r, j] = 1
    rel = [pattern.format(id=i) for i in ids_present]
    ids = _unique_ids(rel)
    keys = content_keys([str(img_dir / r) for r in rel])
    split = assign_splits(ids, labels, "multilabel", fractions, seed, keys)
    return Manifest(
        name=name or (img_dir.parent.name if ann.parent == img_dir.parent else img_dir.name),
        source=str(ann.parent if ann.parent == img_dir.parent else img_dir),
        ids=ids,
        paths=[str(img_dir / r) for r in rel],
        splits=[str(s) for s in split.splits],
        labels=labels,
        labeled=np.ones(len(rel), dtype=bool),
        task="multilabel",
        classes=classes,
        split_seed=seed,
        split_fractions=fractions,
        split_repairs=split.repairs,
        split_copies_moved=split.copies_moved,
        skipped=skipped,
    )


# ----------------------------------------------------------------------------- npz


def from_npz(
    path: str | Path,
    *,
    images_key: str = "images",
    labels_key: str = "labels",
    split_key: str | None = None,
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Manifest:
    """Images ``(N, H, W[, C])`` uint8 and labels ``(N,)`` (ints or strings; ``-1`` = unlabeled) or
    ``(N, C)`` 0/1 in one ``.npz``. ``split_key`` (auto: ``split`` if present) holds per-row split names;
    without it rows are split stratified. Paths are ``"<file.npz>#<i>"``, ids ``"<i>"``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"npz file not found: {p}")
    p = p.resolve()
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
            if images_key not in keys:
                raise DatasetError(
                    f"{p}: no array {images_key!r} (arrays: {', '.join(keys)}); pass images_key"
                )
            if labels_key not in keys:
                raise DatasetError(
                    f"{p}: no array {labels_key!r} (arrays: {', '.join(keys)}); pass labels_key"
                )
            if split_key is None and "split" in keys:
                split_key = "split"
            if split_key is not None and split_key not in keys:
                raise DatasetError(f"{p}: no array {split_key!r} (arrays: {', '.join(keys)})")
            images = z[images_key]
            y = z[labels_key]
            split_arr = z[split_key] if split_key else None
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - zip/pickle/format errors: one line for the user
        raise DatasetError(f"{p}: cannot read npz ({type(e).__name__}: {e})") from None

    n = len(images)
    if images.dtype != np.uint8:
        raise DatasetError(f"{p}: images must be uint8, got {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] in (1, 3, 4))):
        raise DatasetError(f"{p}: images must have shape (N, H, W) or (N, H, W, 1|3|4), got {images.shape}")
    if n == 0:
        raise DatasetError(f"{p}: no images")
    if len(y) != n:
        raise DatasetError(f"{p}: {n} images but {len(y)} labels")

    if y.ndim == 2:
        task = "multilabel"
        if not np.isin(y, (0, 1)).all():
            bad = int(np.flatnonzero(~np.isin(y, (0, 1)).all(axis=1))[0])
            raise DatasetError(f"{p}: multi-hot labels must be 0/1 (row {bad} has {y[bad].tolist()})")
        labels = y.astype(np.uint8)
        classes = (
            [str(c) for c in class_names] if class_names is not None else [str(j) for j in range(y.shape[1])]
        )
        if len(classes) != y.shape[1]:
            raise DatasetError(f"{p}: {len(classes)} class names for {y.shape[1]} label columns")
        labeled = np.ones(n, dtype=bool)
    elif y.ndim == 1:
        if y.dtype.kind in "US":
            ys = y.astype(str)
            labeled = np.array([s.strip() != "" for s in ys], dtype=bool)
            classes = _sort_class_names({s for s in ys[labeled]})
            index = {c: k for k, c in enumerate(classes)}
            labels = np.array(
                [index[s] if ok else -1 for s, ok in zip(ys, labeled, strict=True)], dtype=np.int64
            )
        elif y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
            yi = y.astype(np.int64)
            labeled = yi >= 0
            uniq = np.unique(yi[labeled])
            if class_names is not None:
                classes = [str(c) for c in class_names]
                if uniq.size and uniq.max() >= len(classes):
                    raise DatasetError(f"{p}: label {int(uniq.max())} but only {len(classes)} class names")
                labels = yi
            elif uniq.size and (uniq == np.arange(uniq.size)).all():
                classes = [str(c) for c in uniq]
                labels = yi
            else:
                classes = [str(c) for c in uniq]
                labels = np.where(labeled, np.searchsorted(uniq, yi), -1).astype(np.int64)
        else:
            raise DatasetError(f"{p}: labels must be integers, strings or a 0/1 matrix, got {y.dtype}")
        task = _task_for(len(classes), str(p))
        labels = np.where(labeled, labels, -1).astype(np.int64)
    else:
        raise DatasetError(f"{p}: labels must have shape (N,) or (N, C), got {y.shape}")

    if split_arr is not None:
        if len(split_arr) != n:
            raise DatasetError(f"{p}: {n} images but {len(split_arr)} split values")
        splits = np.array([normalize_split_name(s) for s in split_arr.astype(str)], dtype=object)
        labeled &= np.isin(splits.astype(str), ("train", "val", "test"))
        splits[~labeled & np.isin(splits.astype(str), ("train", "val", "test"))] = "unlabeled"
        lab_idx = np.flatnonzero(labeled)
        sub = splits[lab_idx].astype(str)
        fr, repairs, copies = _fill_missing_splits(
            sub, labels[lab_idx], [str(i) for i in lab_idx], task, fractions, val_fraction, seed,
            lambda sel: content_keys([""] * len(sel), images, lab_idx[sel]),
        )
        splits[lab_idx] = sub
        seed_used = seed if fr is not None else None
    else:
        fr = check_fractions(fractions)
        splits = np.array(["unlabeled"] * n, dtype=object)
        lab_idx = np.flatnonzero(labeled)
        keys = content_keys([str(i) for i in lab_idx], images, lab_idx)
        res = assign_splits([str(i) for i in lab_idx], labels[lab_idx], task, fr, seed, keys)
        splits[lab_idx] = res.splits
        repairs, copies = res.repairs, res.copies_moved
        seed_used = seed
    if not labeled.any():
        raise DatasetError(f"{p}: no labeled rows")
    if task == "multilabel":
        labels[~labeled] = 0
    return Manifest(
        name=name or p.stem,
        source=str(p),
        ids=[str(i) for i in range(n)],
        paths=[f"{p}#{i}" for i in range(n)],
        splits=[str(s) for s in splits],
        labels=labels,
        labeled=labeled,
        task=task,
        classes=classes,
        split_seed=seed_used,
        split_fractions=fr,
        split_repairs=repairs,
        split_copies_moved=copies,
        skipped=[],
        array=images,
    )


# ----------------------------------------------------------------------------- auto


def detect_source(path: str | Path) -> str:
    """Which source :func:`load_dataset` uses: ``npz``, ``csv``, ``label_lists``, ``split_folders``,
    ``class_folders``. Raises :class:`DatasetError` for a missing or unsupported path."""
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
    subs = {d.name.lower(): d for d in _subdirs(p)}
    ann, imgs = subs.get("annotations"), subs.get("images")
    if ann is not None and imgs is not None and any(f.suffix.lower() == ".txt" for f in ann.iterdir()):
        return "label_lists"
    if any(normalize_split_name(s) in ("train", "val", "test") for s in subs):
        return "split_folders"
    if not subs:
        csvs = [
            f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".csv" and not _is_hidden(f.name)
        ]
        if len(csvs) == 1:
            return "csv_in_folder"
    return "class_folders"


def load_dataset(path: str | Path, **options) -> Manifest:
    """Read any supported dataset, choosing the source from what ``path`` is (see :func:`detect_source`).

    ``options`` go to the chosen ``from_*`` function; one that does not apply is a :class:`DatasetError`.
    """
    kind = detect_source(path)
    p = Path(path).expanduser()
    if kind == "npz":
        _check_options(from_npz, options, "npz")
        return from_npz(p, **options)
    if kind == "csv":
        _check_options(from_csv, options, "csv")
        return from_csv(p, **options)
    if kind == "csv_in_folder":
        _check_options(from_csv, options, "csv")
        csv_file = next(
            f for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".csv" and not _is_hidden(f.name)
        )
        options["name"] = options.get("name") or p.resolve().name
        return from_csv(csv_file, **options)
    if kind == "label_lists":
        _check_options(from_label_lists, options, "label-list")
        subs = {d.name.lower(): d for d in _subdirs(p)}
        options["name"] = options.get("name") or p.resolve().name
        return from_label_lists(subs["annotations"], subs["images"], **options)
    if kind == "split_folders":
        _check_options(from_split_folders, options, "split-folder")
        return from_split_folders(p, **options)
    _check_options(from_class_folders, options, "class-folder")
    return from_class_folders(p, **options)
