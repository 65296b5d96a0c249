"""`featpipe demo`: the whole job on a built-in sample, offline."""

from __future__ import annotations

from pathlib import Path

import click

from featpipe.cli._common import POSITIVE


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the sample images, cache, models and report.")
@click.option("--per-class", type=POSITIVE, default=None, help="Images per digit (default: all 1,797).")
@click.option("--backbone", "-b", default="efficientnet_lite0", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def demo(out: str, per_class: int | None, backbone: str, quiet: bool) -> None:
    """Embed scikit-learn's digits with a pretrained backbone, fit every head, build the report.

    Works offline: the digits ship with scikit-learn, the default backbone's weights with a
    Python package.

    \b
    Examples:
      featpipe demo                               # everything under runs/demo/
      featpipe demo --per-class 30 --out /tmp/demo  # a quicker run on 300 images
      featpipe demo -b efficientnet_lite2
    """
    from featpipe.pipeline import run_pipeline

    root = Path(out)
    cfg = {
        "name": "digits",
        "data": {"sample": "digits", "per_class": per_class},
        "backbones": [{"name": backbone}],
        "heads": ["all"],
        "out": str(root),
    }
    run_pipeline(cfg, progress=not quiet, echo=click.echo)
