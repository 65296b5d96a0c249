"""Experiment tracking: each run folder (one fitted head, or one fine-tune) logged as one MLflow run.

What is logged is read from the run's record (:func:`featpipe.runs.read_record`), never re-assembled:
params (backbone, chosen head params, selection metric, seeds), metrics (train/val/test scores, the test
interval, fit seconds; a fine-tune's epochs as steps), tags (cache key, fingerprint, featpipe version),
artifacts (metrics.json, predictions.npz, history.json, the report) and the bundle as an MLflow model
that predicts on image paths. The tracking URI and experiment follow MLflow's own conventions
(``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``); a run whose fingerprint is already logged in the
experiment is not logged again. MLflow is the ``[track]`` extra, imported only here and only when asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from featpipe.errors import import_optional
from featpipe.tracking._common import TrackedRun, TrackingError

TRACKERS = ("mlflow",)


def require_tracker(tracker: str | None) -> None:
    """Stop before any work when ``tracker`` is unknown or its package is not installed (one line, exit 2)."""
    if tracker is None:
        return
    if tracker not in TRACKERS:
        raise TrackingError(f"unknown tracker {tracker!r}; expected one of {', '.join(TRACKERS)}")
    import_optional("mlflow", "track", f"--track {tracker}")


def track_runs(folders: Iterable[str | os.PathLike], tracker: str = "mlflow", *, experiment: str | None = None,
               study: str | None = None, report: str | os.PathLike | None = None) -> list[TrackedRun]:
    """Log every run folder (``<run>/<head>/`` of fit-head, a fine-tune's ``--out``) as one run.

    The experiment: ``experiment``, else ``MLFLOW_EXPERIMENT_NAME``, else ``study`` (a pipeline's name),
    else the run's dataset name. ``report``: a built report folder, logged with each run under ``report/``.
    """
    require_tracker(tracker)
    from featpipe.tracking._mlflow import log_run

    return [log_run(Path(f), experiment=experiment, study=study, report=Path(report) if report else None)
            for f in dict.fromkeys(Path(f) for f in folders)]  # in order, each once


__all__ = ["TRACKERS", "TrackedRun", "TrackingError", "require_tracker", "track_runs"]
