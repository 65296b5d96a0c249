"""`featpipe run`: a whole study from a YAML pipeline file."""

from __future__ import annotations

import click


@click.command()
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Override the pipeline's 'out' folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def run(pipeline_file: str, out: str | None, quiet: bool) -> None:
    """Run a pipeline: dataset -> embed with every backbone -> fit heads -> report.

    \b
    Example pipeline (YAML; relative paths are relative to the file):
      name: cifar10-small
      data: ../../shared/data/cifar10-small
      backbones: [efficientnet_lite0, {name: resnet50, pretrained: false, image_size: 64}]
      heads: [logistic, lgbm]
      fit: {metric: accuracy, refit: train+val}
      report: {human_baseline: 0.94}
      out: runs/cifar10-small
    """
    from featpipe.pipeline import load_config, run_pipeline

    cfg = load_config(pipeline_file)
    if out:
        cfg["out"] = out
    run_pipeline(cfg, progress=not quiet, echo=click.echo)
