"""`data:` the dataset section, and the one place its fields become :func:`load_dataset` options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from featpipe.sections import Section, shorthand


class DataConfig(Section):
    """`data:` the dataset (a bare string is its path)."""

    _short = shorthand("path")
    path: str | None = Field(None, description="Image folder (class folders or train/val/test folders), CSV, "
                             ".npz, a folder with annotations/<label>.txt + images/, a Hugging Face dataset saved "
                             "with save_to_disk, or `hf:NAME[:CONFIG]` from the Hub. In a pipeline: relative "
                             "to the file; `--set data.path=DIR`.", json_schema_extra={"flag": "--data"})
    sample: Literal["digits"] | None = Field(None, description="A bundled sample instead of `path` (`digits`).",
                                             json_schema_extra={"cli": False})
    per_class: int | None = Field(None, gt=0, description="Images per class of the sample.",
                                  json_schema_extra={"cli": False})
    name: str | None = Field(None, description="Dataset name in cache file names (default: the folder's name; "
                             "in a pipeline, the study name).")
    pattern: str | None = Field(None, description="Image file name pattern for label lists, e.g. `im{id}.jpg`.")
    fractions: tuple[float, float, float] | None = Field(
        None, description="train, val, test fractions when the source has no split (default 0.7,0.15,0.15).")
    split_seed: int = Field(0, ge=0, description="Seed of the stratified split when the source has none.")
    path_col: str | None = Field(None, description="CSV: the image path column (default: path, image, file, ...); "
                                 "Hugging Face datasets: the Image column.")
    label_col: str | None = Field(None, description="CSV: the label column (default: label, labels, tags, ...).")
    split_col: str | None = Field(None, description="CSV: the train/val/test column (default: split, subset, ...).")
    label_sep: str | None = Field(None, description="CSV: separator of several labels in one cell (`;`, `|`, `,`, "
                                  "`space`), or `none` for one label per cell (default: `;`, `|` or `,` when only "
                                  "one of them occurs).")
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

    def load_options(self, name: str | None = None) -> dict:
        """The :func:`featpipe.data.load_dataset` options these fields ask for (unset ones left out, so the
        CSV ones only matter for CSV datasets); ``name`` is the default of ``name``."""
        opts: dict = {"name": self.name or name, "seed": self.split_seed}
        if self.fractions:
            opts["fractions"] = tuple(self.fractions)
        extra = {"pattern": self.pattern, "path_col": self.path_col, "label_col": self.label_col,
                 "split_col": self.split_col, "label_sep": self.label_sep,
                 "unlabeled_empty": self.unlabeled_empty or None}
        opts.update({k: v for k, v in extra.items() if v is not None})
        return opts


def open_dataset(config: DataConfig, path: str | None = None, *, name: str | None = None,
                 cache_dir: str | None = None):
    """The :class:`Manifest` of ``config`` (``path``: its path resolved by the caller, default ``config.path``);
    a Hugging Face dataset's image bytes are written under ``cache_dir``."""
    from featpipe.data.sources import detect_source, load_dataset

    source = path or config.path
    opts = config.load_options(name)
    if cache_dir is not None and detect_source(source) == "hf":
        opts["cache_dir"] = cache_dir
    return load_dataset(source, **opts)
