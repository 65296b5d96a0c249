"""`featpipe report`: an HTML report (plus leaderboard.csv and summary.md) of caches and fitted heads."""

from __future__ import annotations

from pathlib import Path

import click

from featpipe.cli._common import config_options
from featpipe.reporting.config import ReportConfig


def _config_human_baseline(path: str) -> float | None:
    from featpipe.pipeline import load_config

    rep = load_config(path).get("report")
    return rep.get("human_baseline") if isinstance(rep, dict) else None


@click.command("report")
@click.option(
    "--cache-dir",
    default="cache",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of feature caches (*.h5); the default is skipped when it does not exist.",
)
@click.option(
    "--cache",
    "caches",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A feature cache file (repeatable), in addition to --cache-dir.",
)
@click.option(
    "--models",
    "models_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder written by featpipe fit-head --out (and fine-tune runs with history.json).",
)
@click.option(
    "--out",
    default="report",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output folder: index.html, plots/, thumbs/, leaderboard.csv, label_issues.csv, summary.md.",
)
@config_options(ReportConfig, only=("human_baseline",))
@click.option(
    "--config",
    "config",
    default=None,
    type=click.Path(dir_okay=False),
    help="Pipeline YAML whose report: {human_baseline: ...} is used when the option is not given.",
)
@click.option("--no-analyses", is_flag=True, help="Skip the label-error and duplicate analyses.")
@click.pass_context
def report(ctx: click.Context, cache_dir, caches, models_dir, out, human_baseline, config, no_analyses):
    """Build or update a self-contained report folder comparing every backbone x head.

    \b
    Examples:
      featpipe report --models models/ --out report/
      featpipe report --cache-dir cache/ --out report/            # dataset, label errors, duplicates only
      featpipe report --models models/ --human-baseline 0.94 --out report/
    """
    from featpipe.reporting import LABEL_ISSUES_CSV, build_report, count_label_issues

    explicit = ctx.get_parameter_source("cache_dir") != click.core.ParameterSource.DEFAULT
    if not explicit and not Path(cache_dir).is_dir():
        cache_dir = None
    if human_baseline is None and config:
        human_baseline = _config_human_baseline(config)
    index = build_report(
        cache_dir=cache_dir,
        models_dir=models_dir,
        out=out,
        caches=list(caches),
        human_baseline=human_baseline,
        analyses=not no_analyses,
    )
    click.echo(f"wrote {index}")
    n = count_label_issues(Path(index).parent)
    if n is not None:
        click.echo(f"wrote {Path(index).parent / LABEL_ISSUES_CSV}: {n} flagged image{'' if n == 1 else 's'}")
