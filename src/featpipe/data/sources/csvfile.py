"""A CSV (or TSV) with one row per image: a path column, one label column or several 0/1 columns, and an
optional split column. Columns and the CSV dialect are detected when not given."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featpipe.data.manifest import Manifest
from featpipe.data.sources._finish import DEFAULT_FRACTIONS, finish, sort_class_names, task_for
from featpipe.data.sources._scan import normalize_split_name, unique_ids
from featpipe.errors import DatasetError

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


@dataclass
class _Columns:
    """Which column holds what: ``label`` (one label column, ``sep`` its separator or ``None`` to detect)
    or ``multi`` (several 0/1 columns)."""

    path: str
    split: str | None
    id: str | None
    label: str | None
    multi: list[str] | None
    sep: str | None


def _columns(
    csv_path: Path, header: list[str], rows: list[dict[str, str]], path_col: str | None, label_col: str | None,
    label_sep: str | None, label_cols: Sequence[str] | None, split_col: str | None, id_col: str | None,
) -> _Columns:
    pcol = _find_col(header, path_col, _PATH_COLS, "image paths", csv_path, required=True, option="--path-col")
    scol = _find_col(header, split_col, _SPLIT_COLS, "split", csv_path, required=False)
    icol = _find_col(header, id_col, (), "ids", csv_path, required=False) if id_col else None
    used = {pcol, scol, icol} - {None}
    multi_cols: list[str] | None = None
    lcol: str | None = None
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
    return _Columns(pcol, scol, icol, lcol, multi_cols, _normalize_label_sep(label_sep))  # type: ignore[arg-type]


def _onehot_labels(
    csv_path: Path, rows: list[dict[str, str]], line: list[int], classes: list[str], is_lab: np.ndarray
) -> np.ndarray:
    """Multi-hot labels from 0/1 columns; an empty cell is allowed in unlabeled rows only."""
    labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
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
    return labels


def _column_labels(
    csv_path: Path, rows: list[dict[str, str]], line: list[int], lcol: str, sep: str | None, is_lab: np.ndarray,
    split_raw: list[str], unlabeled_empty: bool,
) -> tuple[str, list[str], np.ndarray]:
    """Task, classes and labels of one label column (multilabel when it has a separator); an empty
    single-label cell is an error or, with ``unlabeled_empty``, an unlabeled row (``is_lab``/``split_raw``
    are updated in place)."""
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
    classes = sort_class_names({c for cs in cells if cs for c in cs})
    index = {c: k for k, c in enumerate(classes)}
    if sep == "none":
        task = task_for(len(classes), str(csv_path))
        return task, classes, np.array([index[cs[0]] if cs else -1 for cs in cells], dtype=np.int64)
    if not classes:
        raise DatasetError(f"{csv_path}: label column {lcol!r} holds no label at all")
    labels = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for i, cs in enumerate(cells):
        for c in cs or []:
            labels[i, index[c]] = 1
    return "multilabel", classes, labels


def _existing_rows(
    csv_path: Path, rows: list[dict[str, str]], line: list[int], pcol: str, base: Path, split_raw: list[str],
    labels: np.ndarray, skipped: list[tuple[str, str]],
) -> tuple[list[int], list[str], list[str]]:
    """Rows whose image exists: their indices, absolute paths and paths relative to ``base``. A repeated
    row is skipped, a repeated path with another label or split is an error, a missing file skipped."""
    keep: list[int] = []
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
    return keep, abs_paths, rels


def _row_ids(
    csv_path: Path, rows: list[dict[str, str]], line: list[int], keep: list[int], rels: list[str], icol: str | None
) -> list[str]:
    """The id column's values (non-empty, unique), or ids made from the relative paths."""
    if not icol:
        return unique_ids(rels)
    ids = [rows[i][icol] for i in keep]
    if any(not x for x in ids):
        bad = next(i for i in keep if not rows[i][icol])
        raise DatasetError(f"{csv_path}: line {line[bad]}: empty id in column {icol!r}")
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for i in keep:
            x = rows[i][icol]
            if x in seen:
                raise DatasetError(f"{csv_path}: line {line[i]}: id {x!r} already used on line {line[seen[x]]}")
            seen[x] = i
    return ids


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
    cols = _columns(csv_path, header, rows, path_col, label_col, label_sep, label_cols, split_col, id_col)

    split_raw = [normalize_split_name(r[cols.split]) if cols.split else "train" for r in rows]
    for i, s in enumerate(split_raw):
        if cols.split and not s:
            raise DatasetError(f"{csv_path}: line {line[i]}: empty split cell in column {cols.split!r}")
    is_lab = np.array([s in ("train", "val", "test") for s in split_raw], dtype=bool)
    if cols.multi is not None:
        task, classes = "multilabel", list(cols.multi)
        labels = _onehot_labels(csv_path, rows, line, classes, is_lab)
    else:
        assert cols.label is not None
        task, classes, labels = _column_labels(
            csv_path, rows, line, cols.label, cols.sep, is_lab, split_raw, unlabeled_empty
        )

    skipped: list[tuple[str, str]] = []
    keep, abs_paths, rels = _existing_rows(csv_path, rows, line, cols.path, base, split_raw, labels, skipped)
    ids = _row_ids(csv_path, rows, line, keep, rels, cols.id)
    labeled = is_lab[np.array(keep, dtype=np.int64)]
    if not labeled.any():
        raise DatasetError(f"{csv_path}: no labeled rows (split values: {', '.join(sorted(set(split_raw)))})")
    return finish(
        name=name or csv_path.stem, source=str(csv_path), ids=ids, paths=abs_paths,
        labels=labels[np.array(keep, dtype=np.int64)], labeled=labeled, task=task, classes=classes,
        fractions=fractions, seed=seed, splits=[split_raw[i] for i in keep] if cols.split else None,
        val_fraction=val_fraction, skipped=skipped,
    )
