"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from featpipe.backbones import DEFAULT_BACKBONE, PRECISION_CHOICES
from featpipe.tracking import TRACKERS

# Impossible numbers are refused by click (the option named, exit 2) before any work starts.
POSITIVE = click.IntRange(min=1)  # sizes and counts
NON_NEGATIVE = click.IntRange(min=0)  # seeds, worker counts (0: inline), "0: off" switches
IMAGE_SIZE = click.IntRange(min=8)  # the smallest input a network here takes (as the fine-tune check says)
FRACTION = click.FloatRange(0, 1)  # probabilities and fractions of a size


def _require_tracker(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from featpipe.tracking import require_tracker

    require_tracker(value)  # a missing extra stops the command before any work
    return value


track_option = click.option(
    "--track", type=click.Choice(TRACKERS), default=None, callback=_require_tracker,
    help="Log each run written (one MLflow run per fitted head: params, metrics, artifacts, the model) to "
    "MLFLOW_TRACKING_URI (default: MLflow's own), in experiment MLFLOW_EXPERIMENT_NAME (default: the dataset "
    "name); runs logged before are not logged again. Needs featpipe[track].")


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose choices are read from ``module:attr`` when first needed, so a
    command's module imports without the heavy one behind its choices (sklearn for the heads)."""

    def __init__(self, source: str, case_sensitive: bool = True) -> None:
        self._source = source
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        import importlib

        module, attr = self._source.split(":")
        return tuple(getattr(importlib.import_module(module), attr))

    @choices.setter
    def choices(self, value: Any) -> None:  # click may assign; the source stays the truth
        pass


def backbone_options(f: Callable[..., Any] | None = None, *, multiple: bool = False) -> Any:
    """The backbone options; ``multiple=True`` makes ``--backbone`` repeatable (a tuple of names)."""
    if f is None:
        return lambda g: backbone_options(g, multiple=multiple)
    opts = [
        click.option("--backbone", "-b", multiple=multiple, default=(DEFAULT_BACKBONE,) if multiple else DEFAULT_BACKBONE,
                     show_default=True,
                     help="Registry name (featpipe backbones), any timm model name, or an .onnx file"
                     + ("; repeat it to embed with several backbones in one pass over the images, NAME@LAYER "
                        "for a cut per backbone." if multiple else ".")),
        click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="State-dict file for the architecture, timm or torchvision layout (e.g. face "
                     "weights for vgg16; Keras .h5: featpipe convert-weights)."),
        click.option("--no-pretrained", is_flag=True, help="Seeded random init: a baseline."),
        click.option("--layer", default=None,
                     help="Cut at this module (or VGG name like block4_pool) and average-pool it."),
        click.option("--image-size", type=IMAGE_SIZE, default=None, help="Override the model's input size."),
        click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto",
                     show_default=True, help="Autocast precision of the forward pass; auto = bf16 AMP on "
                     "CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), fp32 elsewhere. Part of the cache key."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def dataset_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--data", "-d", "data", required=True, type=click.Path(),
                     help="Image folder (class folders or train/val/test folders), CSV, .npz, "
                     "or a folder with annotations/<label>.txt + images/."),
        click.option("--name", default=None, help="Dataset name used in cache file names (default: folder name)."),
        click.option("--split-seed", type=NON_NEGATIVE, default=0, show_default=True,
                     help="Seed of the stratified split when the source has none."),
        click.option("--fractions", default="0.7,0.15,0.15", show_default=True,
                     help="train,val,test fractions when the source has no split."),
        click.option("--pattern", default=None, help="Image file name pattern for label lists, e.g. 'im{id}.jpg'."),
    ]
    f = csv_options(f)
    for opt in reversed(opts):
        f = opt(f)
    return f


def csv_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """CSV column and label options (every command that opens a dataset has them)."""
    opts = [
        click.option("--label-sep", default=None,
                     help="CSV: separator of several labels in one cell (';', '|', ',', 'space'), or 'none' "
                     "for one label per cell. Default: ';', '|' or ',' when only one of them occurs."),
        click.option("--label-col", default=None, help="CSV: the label column (default: label, labels, tags, ...)."),
        click.option("--path-col", default=None, help="CSV: the image path column (default: path, image, file, ...)."),
        click.option("--split-col", default=None, help="CSV: the train/val/test column (default: split, subset, ...)."),
        click.option("--unlabeled-empty", is_flag=True,
                     help="CSV, single-label: an empty label cell marks the row unlabeled instead of an error."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


CSV_OPTION_NAMES = ("label_sep", "label_col", "path_col", "split_col", "unlabeled_empty")


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three numbers like 0.7,0.15,0.15, got {text!r}") from None
    if len(parts) != 3:
        raise click.BadParameter(f"expected three numbers like 0.7,0.15,0.15, got {text!r}")
    return parts  # type: ignore[return-value]


def open_dataset(data: str, *, name: str | None, split_seed: int, fractions: str, pattern: str | None,
                 **csv: Any):
    """Load a dataset from the shared CLI options (``csv``: :data:`CSV_OPTION_NAMES`; unset ones are
    left out, so they only matter for CSV datasets)."""
    from featpipe.data import load_dataset

    opts: dict[str, Any] = {"name": name, "seed": split_seed, "fractions": parse_fractions(fractions)}
    if pattern:
        opts["pattern"] = pattern
    opts.update({k: v for k, v in csv.items() if k in CSV_OPTION_NAMES and v not in (None, False)})
    return load_dataset(data, **opts)
