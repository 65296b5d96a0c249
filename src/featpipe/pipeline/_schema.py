"""The pipeline file schema: pydantic models, one per section. Adding a key is one ``Field`` line.

Every model forbids unknown keys. Descriptions are the documentation: ``featpipe run --schema``
prints them as the README table.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from featpipe.backbones import PRECISION_CHOICES
from featpipe.finetune import SCHEDULES
from featpipe.tracking import TRACKERS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _shorthand(key: str):
    """A bare string stands for ``{key: string}`` (``backbones: [resnet50]``, ``data: photos/``)."""

    def before(cls, v: Any) -> Any:
        return {key: v} if isinstance(v, str) else v

    return model_validator(mode="before")(classmethod(before))


class DataConfig(Section):
    """`data:` the dataset (a bare string is its path)."""

    _short = _shorthand("path")
    path: str | None = Field(None, description="Image folder (class or split folders), CSV, .npz, or a folder "
                             "with annotations/ + images/. Relative to the pipeline file; `--set data.path=DIR`.")
    sample: Literal["digits"] | None = Field(None, description="A bundled sample instead of `path` (`digits`).")
    per_class: int | None = Field(None, gt=0, description="Images per class of the sample.")
    name: str | None = Field(None, description="Dataset name in cache file names (default: the study name).")
    pattern: str | None = Field(None, description="Image file name pattern for label lists, e.g. `im{id}.jpg`.")
    fractions: tuple[float, float, float] | None = Field(
        None, description="train, val, test fractions when the source has no split.")
    split_seed: int = Field(0, description="Seed of the split when the source has none.")
    path_col: str | None = Field(None, description="CSV: column of image paths.")
    label_col: str | None = Field(None, description="CSV: column of labels.")
    split_col: str | None = Field(None, description="CSV: column of split names.")
    label_sep: str | None = Field(None, description="CSV: separator of several labels in one cell (multi-label; "
                                  "`space`, or `none` for one label per cell; default: `;` `|` `,` detected).")
    unlabeled_empty: bool = Field(False, description="CSV, single-label: an empty label cell marks the row "
                                  "unlabeled instead of an error.")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        from featpipe.data.splitting import check_fractions  # the loader's own check (a ValueError)

        return None if v is None else check_fractions(v)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path and self.sample:
            raise ValueError("give either 'path' or 'sample', not both")
        if self.per_class is not None and not self.sample:
            raise ValueError("'per_class' applies to 'sample' only")
        return self


class BackboneConfig(Section):
    """One entry of `backbones:` (a bare string is its name)."""

    _short = _shorthand("name")
    name: str = Field(description="Registry name (`featpipe backbones`), any timm model name, or an .onnx file.")
    id: str | None = Field(None, description="Name that `fuse` uses for this entry (default: `name`).")
    weights: str | None = Field(None, description="State-dict file for the architecture (relative to the file).")
    pretrained: bool = Field(True, description="false: seeded random init (a baseline).")
    layer: str | None = Field(None, description="Cut at this module (or VGG name like `block4_pool`).")
    image_size: int | None = Field(None, gt=0, description="Override the model's input size.")
    precision: Literal[*PRECISION_CHOICES] = Field("auto", description="Forward-pass precision.")
    batch_size: int | None = Field(None, gt=0, description="Embedding batch size for this backbone.")
    tta: Literal["hflip"] | None = Field(None, description="`hflip`: cache the mean of the features of each "
                                         "image and its mirror (own cache key).")
    align: Literal["faces"] | None = Field(None, description="`faces`: YuNet detection + 5-point alignment "
                                           "first; no face -> a failed row. Recorded in cache and bundle.")

    @model_validator(mode="after")
    def _weights_or_random(self) -> BackboneConfig:
        if self.weights and not self.pretrained:
            raise ValueError("'weights' and 'pretrained: false' contradict each other")
        return self

    @property
    def ref(self) -> str:
        return self.id or self.name


class HeadConfig(Section):
    """One entry of `heads:` (a bare string is its name)."""

    _short = _shorthand("name")
    name: str = Field(description="`logistic`, `mlp`, `lgbm` or `all`.")
    params: dict[str, Any] = Field(default_factory=dict, description="Extra constructor arguments of the head "
                                   "(e.g. `{C_grid: [0.1, 1]}`); part of its up-to-date check.")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from featpipe.heads import HEAD_CHOICES

        if v not in HEAD_CHOICES:
            raise ValueError(f"unknown head {v!r}; expected one of {', '.join(HEAD_CHOICES)}")
        return v

    @model_validator(mode="after")
    def _params_exist(self) -> HeadConfig:
        import inspect

        from featpipe.heads import HEADS, head_names

        fixed = {"self", "task", "preprocess", "class_weight", "refit", "metric", "seed"}  # set from fit.*
        for name in head_names(self.name):
            allowed = set(inspect.signature(HEADS[name].__init__).parameters) - fixed
            for key in self.params:
                if key not in allowed:
                    import difflib

                    near = difflib.get_close_matches(key, sorted(allowed), n=1)
                    hint = f" (did you mean {near[0]!r}?)" if near else f"; it takes {', '.join(sorted(allowed))}"
                    raise ValueError(f"params.{key}: not a parameter of the {name} head{hint}")
        return self


class FitConfig(Section):
    """`fit:` how heads are tuned and scored."""

    metric: str | None = Field(None, description="Selection and threshold metric (default per task).")
    class_weight: Literal["balanced"] | None = Field(None, description="`balanced`: weight classes by frequency.")
    refit: Literal["train", "train+val"] = Field("train+val", description="Rows of the final fit (thresholds "
                                                 "from out-of-fold probabilities with `train+val`; out of core: "
                                                 "`train`).")
    preprocess: Literal["standardize", "l2", "none"] = Field("standardize", description="Feature scaling.")
    min_positives: int = Field(5, ge=0, description="Multi-label: fewest val positives to tune a label's threshold.")
    threshold_mode: Literal["per-class", "global"] = Field("per-class", description="Multi-label thresholds used.")
    cv: int | None = Field(None, ge=0, description="Choose hyper-parameters by K-fold CV on train+val instead "
                           "of the val split, then refit on train+val (default: 5-fold only where the val split "
                           "is too small to select on: < 30 rows or < 5 of a class or label; 0: never).")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of the test interval (0: none).")
    max_memory: str | None = Field(None, description="Memory budget of a head's fit, e.g. `8GB` (default: half "
                                   "the RAM); larger caches are fitted out of core.")

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


class EmbedConfig(Section):
    """`embed:` options of every embedding run."""

    feature_dtype: Literal["float32", "float16"] = Field("float32", description="Storage type of cached features.")
    batch_size: int | None = Field(None, gt=0, description="Default batch size (a backbone's own wins).")
    workers: int | None = Field(None, ge=0, description="Decode workers.")
    decode: Literal["auto", "cpu", "device", "device-jpeg"] = Field(
        "auto", description="Where images are resized (and JPEGs decoded): see `featpipe embed --decode`.")
    engine: Literal["local", "ray"] = Field("local", description="`ray`: Ray Data engine (decode tasks + "
                                            "backbone actors; `pip install featpipe[ray]`).")
    address: str | None = Field(None, description="Ray cluster address (engine `ray`; default: a local instance).")
    ray_actors: int | None = Field(None, gt=0, description="Backbone actors of the Ray engine.")
    retry_failed: bool = Field(False, description="Retry every failed row (I/O failures are always retried).")


class FinetuneConfig(Section):
    """One entry of `finetune:`: an end-to-end run into the same models folder and leaderboard."""

    backbone: str = Field(description="Backbone name, or `scratch-cnn`.")
    id: str | None = Field(None, description="Run name (default: the backbone name).")
    weights: str | None = Field(None, description="Starting weights file (relative to the file).")
    layer: str | None = Field(None, description="Cut the backbone at this layer.")
    image_size: int | None = Field(None, gt=0, description="Training input size.")
    unfreeze: str = Field("all", pattern=r"^(head|all|last-\d+)$", description="`head`, `last-N` or `all`.")
    epochs: int | None = Field(None, gt=0, description="Most epochs (early stopping may end sooner).")
    budget: str | None = Field(None, description="Time budget, e.g. `30m`, `90s`, `1h`: epochs and schedule "
                               "are planned from the measured first steps to end within it (linear probe "
                               "and final evaluation included).")
    patience: int | None = Field(None, gt=0, description="Early-stopping patience in epochs.")
    batch_size: int | None = Field(None, gt=0, description="Training batch size.")
    lr: float | None = Field(None, gt=0, description="Head learning rate (the backbone's is lower).")
    optimizer: Literal["adamw", "sgd"] | None = Field(None, description="Optimiser.")
    schedule: Literal[*SCHEDULES] | None = Field(None, description="Learning-rate schedule.")
    weight_decay: float | None = Field(None, ge=0, description="Weight decay.")
    label_smoothing: float | None = Field(None, ge=0, lt=1, description="Cross-entropy label smoothing.")
    augment: Literal["none", "light", "strong"] | None = Field(None, description="Training-split augmentation.")
    class_weight: Literal["balanced"] | None = Field(None, description="`balanced`: weight classes by frequency.")
    precision: Literal[*PRECISION_CHOICES] | None = Field(None, description="Training precision.")
    in_channels: Literal[1, 3] | None = Field(None, description="`scratch-cnn`: 1 for grayscale-native "
                                              "(default when the images are gray).")
    width: int | None = Field(None, gt=0, description="`scratch-cnn` width.")
    depth: int | None = Field(None, gt=0, description="`scratch-cnn` depth.")
    dropout: float | None = Field(None, ge=0, lt=1, description="`scratch-cnn` dropout.")

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        if v is None:
            return v
        from featpipe.errors import FinetuneError
        from featpipe.finetune import parse_duration

        try:
            parse_duration(v)
        except FinetuneError as e:
            raise ValueError(str(e)) from None
        return str(v)


class PredictConfig(Section):
    """`predict:` labels for an unlabeled folder with the best model by validation."""

    _short = _shorthand("path")
    path: str = Field(description="Folder (searched recursively) or image file; relative to the pipeline file; "
                      "`{data}` stands for `data.path` (e.g. `{data}/pred`).")
    out: str = Field("predictions.csv", description="CSV written inside the study's `out` folder.")
    model: str = Field("best", description="`best` (highest validation score) or `<run>/<head>`.")


class ReportConfig(Section):
    """`report:` the HTML report (`report: false` turns it off)."""

    enabled: bool = Field(True, description="Build the report.")
    human_baseline: float | None = Field(None, ge=0, le=1, description="Human score line in the leaderboard.")

    @model_validator(mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v


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


SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("", Pipeline), ("data.", DataConfig), ("backbones[].", BackboneConfig), ("heads[].", HeadConfig),
    ("fit.", FitConfig), ("embed.", EmbedConfig), ("finetune[].", FinetuneConfig), ("predict.", PredictConfig),
    ("report.", ReportConfig),
]
