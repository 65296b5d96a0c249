"""`featpipe run`: a whole study from a validated YAML pipeline file."""

from __future__ import annotations

import click

from featpipe.cli._common import track_option


@click.command()
@click.argument("pipeline_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key (value parsed as YAML), e.g. --set data.path=~/faces "
              "--set backbones[0].weights=vggface.pth. Repeatable.")
@click.option("--check", is_flag=True, help="Validate the file (keys, types, combinations) and everything a run "
              "checks before any work (data path, split fractions, backbone weights, metric, predict images); "
              "then stop, having written nothing.")
@click.option("--dry-run", is_flag=True, help="Print the plan: each stage, up to date or will run, and why.")
@click.option("--skip-unavailable", is_flag=True,
              help="Run without backbones whose weights are unavailable offline (listed as skipped).")
@click.option("--schema", is_flag=True, help="Print every pipeline key as a Markdown table and exit.")
@click.option("--options", "options_doc", is_flag=True,
              help="Print the option reference of embed / fit-head / finetune / report with their pipeline keys "
              "(docs/options.md) and exit.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Override the pipeline's 'out' folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@track_option
def run(pipeline_file, overrides, check, dry_run, skip_unavailable, schema, options_doc, out, quiet, track) -> None:
    """Run a pipeline: dataset -> embed per backbone -> heads (and fused heads) -> predict -> report.

    The file is validated first: an unknown key, a wrong type or an impossible combination stops
    the run before any work with FILE:LINE: field: message (exit 2). Stages whose inputs did not
    change are skipped (caches reuse rows; a head is refitted only when its features, its config,
    the seed or library versions changed). Input paths (data.path, weights, predict.path, also
    when given with --set) are relative to the pipeline file; out and cache_dir to the working dir.

    \b
    Examples:
      featpipe run pipelines/cifar10-small.yaml
      featpipe run pipelines/face-gender.yaml --set data.path=~/faces --check
      featpipe run pipelines/scenes.yaml --set data.path=~/scenes --dry-run
      featpipe run pipelines/photo-tags.yaml --set data.path=~/photos --skip-unavailable
      featpipe run pipelines/cifar10-small.yaml --track mlflow
      featpipe run --schema
      featpipe run --options > docs/options.md

    \b
    Example pipeline:
      name: cifar10-small
      data: ../../shared/data/cifar10-small
      backbones: [efficientnet_lite0, {name: resnet50, pretrained: false, image_size: 64}]
      heads: [logistic, lgbm]
      fuse: [[efficientnet_lite0, resnet50]]
      fit: {metric: accuracy, refit: train+val}
      report: {human_baseline: 0.94}
    """
    from featpipe.errors import PipelineError
    from featpipe.pipeline import Study, load_pipeline, options_markdown, schema_markdown

    if options_doc:
        click.echo(options_markdown(), nl=False)
        return
    if schema:
        click.echo(schema_markdown(), nl=False)
        return
    if not pipeline_file:
        raise PipelineError("give a pipeline file (or --schema)")
    loaded = load_pipeline(pipeline_file, overrides)
    study = Study(loaded, out=out, skip_unavailable=skip_unavailable, progress=not quiet, echo=click.echo,
                  track=track)
    if check:
        d = loaded.config.data
        study.preflight(data=bool(d.path))  # a sample is made at run time: nothing to check before
        for row in study.backbones():
            if row.unavailable:
                click.echo(f"{row.config.ref}: would be skipped ({row.unavailable})")
        note = "" if d.path or d.sample else " (data.path unset: pass --set data.path=DIR)"
        click.echo(f"{pipeline_file}: ok{note}")
        return
    if dry_run:
        steps = study.plan()
        click.echo(f"plan for {pipeline_file} -> {study.out}")
        err = study.unavailable_error()
        if err:
            click.echo("the run would stop before any work: " + str(err))
        for step in steps:
            click.echo(step.line())
        return
    study.run()
