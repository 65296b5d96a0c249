"""Predictions for image files as a CSV: path, label, error, one probability column per class."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featpipe.folders import writable_folder


def label_text(label: Any) -> str:
    """A predicted label as CSV text: multi-label lists joined with ``;``, unreadable images empty."""
    if label is None:
        return ""
    return ";".join(label) if isinstance(label, list) else str(label)


def write_predictions_csv(out_csv: str | Path, files: Sequence[str], proba: Any, labels: Sequence[Any],
                          errors: dict[str, str], classes: Sequence[str]) -> None:
    """The CSV of ``featpipe predict --out`` (and the pipeline's predict stage)."""
    writable_folder(Path(out_csv).parent, "output")
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "error", *(f"p_{c}" for c in classes)])
        for p, lab, row in zip(files, labels, proba, strict=True):
            w.writerow([p, label_text(lab), errors.get(p, ""),
                        *("" if math.isnan(v) else f"{v:.6f}" for v in row)])


def predict_to_csv(model: Any, files: Sequence[str], out_csv: str | Path) -> int:
    """Predict ``files`` with a loaded bundle and write the CSV; returns the number of unreadable images."""
    proba = model.predict_proba(list(files))
    errors = dict(model.last_errors_)
    write_predictions_csv(out_csv, files, proba, model.labels_from_proba(proba), errors,
                          [str(c) for c in model.classes_])
    return len(errors)
