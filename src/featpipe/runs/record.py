"""The run record: one writer and one reader for the files of a run folder (``<run>/<head>/``).

A run is its files (``model.joblib``, ``predictions.npz``) plus ``metrics.json``, the record, which is
written last and names the sha256 of every other file. The writer removes the old record before it
touches any file, so a kill at any moment leaves either a complete run or a folder with no record
(not a run: ``run`` re-fits it, ``report`` leaves it out); a file that changed since the record was
written (another run's model copied in, a truncated predictions.npz) is named by the reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featpipe.checksum import atomic_write_text, sha256_file
from featpipe.errors import FeaturepipeError

RECORD_FILE = "metrics.json"
RECORD_SCHEMA = 2  # 1: no "record" section (files written one after another, unverified)


class RunRecordError(FeaturepipeError):
    """A run folder whose record is missing, unreadable, or does not match its files."""


def write_run_files(folder: str | os.PathLike, record: dict[str, Any],
                    files: dict[str, Callable[[Path], Any]]) -> Path:
    """Write a run: each ``files[name](path)`` writes ``folder/name``, then the record (``record`` plus the
    files' sha256) lands last, atomically. Returns the folder."""
    from featpipe.heads.metrics import jsonable

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    (d / RECORD_FILE).unlink(missing_ok=True)  # until the new record lands, this folder is not a run
    hashes = {}
    for name, write in files.items():
        write(d / name)
        hashes[name] = sha256_file(d / name)
    full = {**record, "record": {"schema": RECORD_SCHEMA, "files": hashes}}
    atomic_write_text(d / RECORD_FILE, json.dumps(jsonable(full), indent=2, allow_nan=False) + "\n")
    return d


def run_problem(folder: str | os.PathLike, record: dict[str, Any] | None = None) -> str | None:
    """Why the run in ``folder`` cannot be trusted as one run (None: it can). ``record``: its parsed
    record, when the caller read it already."""
    d = Path(folder)
    if record is None:
        try:
            record = _parse(d)
        except RunRecordError as e:
            return str(e)
    files = (record.get("record") or {}).get("files")
    if files is None:  # written before records named their files: at least nothing may be empty
        empty = [p.name for p in (d / "model.joblib", d / "predictions.npz") if p.is_file() and p.stat().st_size == 0]
        return f"{', '.join(empty)} empty (an interrupted write)" if empty else None
    for name, want in files.items():
        p = d / name
        if not p.is_file():
            return f"{name} is missing (its run record lists it)"
        if sha256_file(p) != want:
            return f"{name} does not match its run record (changed, truncated or from another run)"
    return None


def read_record(folder: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The record of the run in ``folder``; with ``verify``, only when every file matches it."""
    d = Path(folder)
    record = _parse(d)
    problem = run_problem(d, record) if verify else None
    if problem:
        raise RunRecordError(f"run {d}: {problem}; re-run it to rebuild the run")
    return record


def _parse(d: Path) -> dict[str, Any]:
    p = d / RECORD_FILE
    if not p.is_file():
        raise RunRecordError(f"no {RECORD_FILE} in {d} (not fitted yet, or its writing was interrupted)")
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunRecordError(f"unreadable {RECORD_FILE} in {d} ({str(e)[:100]})") from None
    if not isinstance(record, dict):
        raise RunRecordError(f"{p} is not a run record")
    return record
