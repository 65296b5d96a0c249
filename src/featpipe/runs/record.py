"""The run record: one writer and one reader for the files of a run folder (``<run>/<head>/``).

A run is its files (``model.joblib``, ``predictions.npz``) plus ``metrics.json``, the record, which is
written last and names the sha256 of every other file. The writer removes the old record before it
touches any file, so a kill at any moment leaves either a complete run or a folder with no record
(not a run: ``run`` re-fits it, ``report`` leaves it out); a file that changed since the record was
written (another run's model copied in, a truncated predictions.npz) is named by the reader.

:class:`RunRecord` is the record's schema: every producer (fit-head, finetune, run) hands its fields to
the one writer, which refuses a record missing one, so the kinds of run cannot drift apart again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from featpipe.checksum import atomic_write_text, sha256_file
from featpipe.errors import FeaturepipeError

RECORD_FILE = "metrics.json"
RECORD_SCHEMA = 2  # 1: no "record" section (files written one after another, unverified)


class RunRecordError(FeaturepipeError):
    """A run folder whose record is missing, unreadable, or does not match its files."""


class RunRecord(BaseModel):
    """What every run records (``metrics.json``), whichever stage made it; ``record`` (the files' hashes and
    the schema version) is added by the writer."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    featpipe_version: str
    run: str
    head: str
    head_type: str
    out_of_core: bool
    task: str
    classes: list[Any]
    metric: str
    seed: int
    cache: dict[str, Any]  # the features it was fitted on: cache path and key, backbone spec, dataset
    params: Any  # the chosen hyper-parameters (per label for multi-label heads)
    head_params: dict[str, Any]  # constructor settings beyond the defaults
    search: list[Any]
    refit: str
    selection: dict[str, Any]
    bootstrap: dict[str, Any]
    preprocess: str
    class_weight: str
    threshold: Any
    skipped_labels: list[Any]
    scores: dict[str, Any]  # per split: the metric table's scores; test with its interval
    val_scores_from: str
    gap: float | None
    gap_definition: str
    fit_seconds: float
    train_fingerprint: str
    created: str
    versions: dict[str, Any]
    finetune: dict[str, Any] | None = None  # fine-tune runs: epochs, budget, linear probe, ...
    stage: dict[str, Any] | None = None  # runs of a pipeline: the stage's fingerprint and inputs
    record: dict[str, Any] | None = None  # written by write_run_files


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    try:
        RunRecord.model_validate(record)
    except ValidationError as e:
        err = e.errors()[0]
        raise RunRecordError(f"run record field {'.'.join(map(str, err['loc']))}: {err['msg']} "
                             "(a featpipe bug: please report it)") from None
    return {k: v for k, v in record.items() if v is not None or k not in ("finetune", "stage", "record")}


def write_run_files(folder: str | os.PathLike, record: dict[str, Any],
                    files: dict[str, Callable[[Path], Any]]) -> Path:
    """Write a run: each ``files[name](path)`` writes ``folder/name``, then the record (``record`` plus the
    files' sha256) lands last, atomically. Returns the folder."""
    from featpipe.heads.metrics import jsonable

    record = _checked(record)  # before anything is touched
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


def amend_record(folder: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Add ``fields`` (e.g. a pipeline's ``stage``) to the complete run in ``folder``: its files must match
    the record; the new record replaces the old one atomically. Returns it."""
    from featpipe.heads.metrics import jsonable

    d = Path(folder)
    record = _checked({**read_record(d), **fields})
    atomic_write_text(d / RECORD_FILE, json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n")
    return record


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
