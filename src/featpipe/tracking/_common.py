"""What a tracker gives back, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featpipe.errors import FeaturepipeError


class TrackingError(FeaturepipeError):
    """A tracking server or store that refused or failed a log (the runs on disk are untouched)."""


@dataclass
class TrackedRun:
    """One run folder and the MLflow run that holds it; ``logged`` False: it was logged before."""

    folder: Path
    experiment: str
    run_id: str
    logged: bool

    def line(self) -> str:
        what = "logged" if self.logged else "already logged"
        return f"mlflow: {what} {self.folder} -> experiment {self.experiment!r}, run {self.run_id}"
