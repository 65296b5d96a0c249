"""The pipeline file schema: the stages' own config sections, composed. Adding a key is one ``Field``
line in its stage's section (``featpipe.data.config``, ``featpipe.backbones.config``, ...).

Every model forbids unknown keys. Descriptions are the documentation: ``featpipe run --schema``
prints them as the key table of docs/pipelines.md, docs/options.md lists them per command.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from featpipe.backbones.config import BackboneConfig
from featpipe.data.config import DataConfig
from featpipe.features.config import EmbedConfig
from featpipe.finetune import FinetuneConfig
from featpipe.heads.config import HeadConfig
from featpipe.reporting.config import ReportConfig
from featpipe.runs.config import FitConfig
from featpipe.sections import Section, in_pipeline, shorthand
from featpipe.tracking import TRACKERS

__all__ = ["SECTIONS", "BackboneConfig", "DataConfig", "EmbedConfig", "FinetuneConfig", "FitConfig", "HeadConfig",
           "Pipeline", "PredictConfig", "ReportConfig", "in_pipeline"]


class PredictConfig(Section):
    """`predict:` labels for an unlabeled folder with the best model by validation."""

    _short = shorthand("path")
    path: str = Field(description="Folder (searched recursively) or image file; relative to the pipeline file; "
                      "`{data}` stands for `data.path` (e.g. `{data}/pred`).")
    out: str = Field("predictions.csv", description="CSV written inside the study's `out` folder.")
    model: str = Field("best", description="`best` (highest validation score) or `<run>/<head>`.")


class Pipeline(Section):
    """A whole study: dataset -> embed per backbone -> heads (and fused heads) -> fine-tune -> predict -> report."""

    name: str = Field("study", description="Study name (cache and run names, default `out`).")
    data: DataConfig = Field(description="The dataset (see `data.*`).")
    backbones: list[BackboneConfig] = Field(min_length=1, description="Backbones to embed with (see `backbones[].*`).")
    heads: list[HeadConfig] = Field(default_factory=lambda: [HeadConfig(name="all")],
                                    description="Heads fitted on every cache; `[]` fits none.")
    fit: FitConfig = Field(default_factory=FitConfig, description="Head tuning (see `fit.*`).")
    fuse: list[list[str]] = Field(default_factory=list, description="Groups of backbone ids whose caches are "
                                  "concatenated (rows matched by image id) and fitted with `heads`.")
    finetune: list[FinetuneConfig] = Field(default_factory=list, description="End-to-end runs (see `finetune[].*`).")
    predict: PredictConfig | None = Field(None, description="Predictions for an unlabeled folder (see `predict.*`).")
    report: ReportConfig = Field(default_factory=ReportConfig, description="The report (see `report.*`).")
    embed: EmbedConfig = Field(default_factory=EmbedConfig, description="Embedding options (see `embed.*`).")
    seed: int = Field(0, description="Seed of backbones' random init and of every head; recorded everywhere.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="`auto`, `cpu`, `cuda`, `cuda:N`.")
    track: Literal[*TRACKERS] | None = Field(None, description="`mlflow`: log each fitted head and fine-tune as an "
                                            "MLflow run (`MLFLOW_TRACKING_URI`; `pip install featpipe[track]`); "
                                            "heads logged before are not logged again.")
    experiment: str | None = Field(None, description="MLflow experiment of `track` (default "
                                   "`MLFLOW_EXPERIMENT_NAME`, else the study name).")
    out: str | None = Field(None, description="Output folder (default `runs/<name>`; relative to the working dir).")
    cache_dir: str | None = Field(None, description="Feature cache folder (default `<out>/cache`).")

    @field_validator("backbones", "heads", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, dict)) else v

    @field_validator("finetune", mode="before")
    @classmethod
    def _study_keys(cls, v: Any) -> Any:
        study = {"metric": "fit.metric", "seed": "seed", "device": "device", "cache_dir": "cache_dir"}
        for i, entry in enumerate(v if isinstance(v, list) else []):
            for key in entry if isinstance(entry, dict) else ():
                if key in study and not in_pipeline(FinetuneConfig.model_fields[key]):
                    raise ValueError(f"finetune[{i}].{key}: set for the whole study, as `{study[key]}`")
        return v


SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("", Pipeline), ("data.", DataConfig), ("backbones[].", BackboneConfig), ("heads[].", HeadConfig),
    ("fit.", FitConfig), ("embed.", EmbedConfig), ("finetune[].", FinetuneConfig), ("predict.", PredictConfig),
    ("report.", ReportConfig),
]
