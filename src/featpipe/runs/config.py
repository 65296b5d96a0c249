"""`fit:` how heads are tuned and scored (:func:`featpipe.runs.fit.fit_cache` takes it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from featpipe.sections import Section


class FitConfig(Section):
    """`fit:` how heads are tuned and scored."""

    metric: str | None = Field(None, description="The metric that selects hyper-parameters, early-stops (mlp, "
                               "lgbm), tunes thresholds and ranks runs. Default: f1 (binary), accuracy "
                               "(multiclass), micro_f1 (multilabel).",
                               json_schema_extra={"choices": "featpipe.heads.metrics:METRICS"})
    class_weight: Literal["balanced"] | None = Field(None, description="`balanced` weights classes inversely to "
                                                     "their frequency (binary: pos_weight = neg/pos).")
    refit: Literal["train", "train+val"] = Field(
        "train+val", description="Rows the chosen configuration is finally fitted on. `train+val`: every "
        "labelled row, with thresholds tuned on out-of-fold probabilities over train+val (5-fold, seeded); "
        "`train`: the model scored on val, thresholds tuned on val. Out of core: `train`.")
    preprocess: Literal["standardize", "l2", "none"] = Field("standardize", description="Feature preprocessing "
                                                             "before the head.")
    min_positives: int = Field(5, ge=0, description="Multi-label: labels with fewer val positives use the "
                               "global threshold.")
    threshold_mode: Literal["per-class", "global"] = Field("per-class", description="Multi-label: which tuned "
                                                           "thresholds the model uses (both are recorded).")
    cv: int | None = Field(None, ge=0, description="Choose hyper-parameters by K-fold CV over train+val instead "
                           "of the val split, then refit on train+val. Default: 5-fold only where the val split "
                           "is too small to select on (fewer than 30 rows, or a class / label with fewer than "
                           "5); 0: never.")
    bootstrap: int = Field(1000, ge=0, description="Resamples of the test rows for each test score's 95% "
                           "interval (seeded by the seed; 0: no interval).")
    max_memory: str | None = Field(None, description="Memory budget of a head's fit, e.g. `8GB` (default: half "
                                   "the RAM); caches whose features would not fit are fitted out of core, read "
                                   "from disk in slabs.", json_schema_extra={"type": "text", "metavar": "SIZE"})

    @field_validator("cv")
    @classmethod
    def _folds(cls, v: int | None) -> int | None:
        if v == 1:
            raise ValueError("1 fold is no cross-validation; give 0 (never) or K >= 2")
        return v

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        from featpipe.heads.metrics import METRICS

        if v is not None and v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; expected one of {', '.join(METRICS)}")
        return v

    def fit_options(self) -> dict[str, Any]:
        """These fields as :func:`featpipe.runs.fit.fit_cache` keywords (``max_memory`` is the cache's:
        :func:`featpipe.runs.fit.open_cache`)."""
        return {"metric": self.metric, "class_weight": self.class_weight, "refit": self.refit,
                "preprocess": self.preprocess, "min_positives": self.min_positives,
                "threshold_mode": self.threshold_mode, "cv": self.cv, "n_bootstrap": self.bootstrap}
