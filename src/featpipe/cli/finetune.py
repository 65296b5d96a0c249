"""`featpipe finetune`: train a backbone end to end (LP-FT) or a small CNN from scratch."""

from __future__ import annotations

import click

from featpipe.cli._common import POSITIVE, config_options, dataset_options, track_option
from featpipe.finetune import FinetuneConfig


@click.command("finetune")
@dataset_options
@config_options(FinetuneConfig, into="config", short={"backbone": "-b"}, aliases={"num_workers": "--workers"})
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: history.json, best.pt, last.pt, metrics.json, predictions.npz, model.joblib.")
@click.option("--threads", type=POSITIVE, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--force", is_flag=True, help="Start over even if --out holds a run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@track_option
def finetune(data, data_config, config, out, threads, resume, force, quiet, track):
    """Fine-tune a backbone end to end on a dataset (same manifest and split as embed), or train
    scratch-cnn from random init. Writes the same metrics.json / model.joblib as fit-head, so
    report and predict use it like any run, and best.pt, which embed accepts as finetuned:RUN.

    \b
    Examples:
      featpipe finetune --data cifar/ --backbone efficientnet_lite0 --image-size 128 --out runs/lite0
      featpipe finetune --data cifar/ --budget 10m --out runs/lite0-10m
      featpipe finetune --data faces/ --backbone scratch-cnn --budget 30m --out runs/scratch
      featpipe finetune --data photos/ --pos-weight auto --unfreeze last-3 --out runs/photos
      featpipe finetune --data cifar/ --out runs/lite0 --resume
      featpipe finetune --data cifar/ --out runs/lite0 --track mlflow
      featpipe finetune --data cifar/ --cross-fit 4 --budget 40m --out runs/lite0-check
      featpipe embed --data cifar/ --backbone finetuned:runs/lite0
    """
    import time

    started = time.monotonic()
    import torch

    from featpipe.cli._common import open_dataset
    from featpipe.finetune import finetune as run_finetune
    from featpipe.finetune import seconds_since_process_start

    if _is_the_program():  # the budget counts the interpreter's start-up and imports too
        started = time.monotonic() - seconds_since_process_start()

    if threads:
        torch.set_num_threads(threads)
    manifest = open_dataset(data, data_config, config.cache_dir)
    counts = ", ".join(f"{k} {v}" for k, v in manifest.split_counts().items())
    click.echo(f"dataset {manifest.name}: {len(manifest)} images ({counts}), {manifest.task}, "
               f"{len(manifest.classes)} classes", err=True)
    if config.cross_fit:  # out-of-fold probabilities for the report's label check; no model
        from featpipe.finetune import cross_fit

        rec = cross_fit(manifest, config, out, force=force, progress=not quiet, log=lambda m: click.echo(m, err=True))
        click.echo(f"cross-fit: {rec['folds']} fine-tunes, out-of-fold accuracy {rec['oof_accuracy']:.4f} on "
                   f"{rec['n_scored']} of {rec['n_labeled']} labelled images; the report's label check uses "
                   f"{out} when it is under --models")
        return
    res = run_finetune(manifest, config, out, resume=resume, force=force, progress=not quiet,
                       log=lambda m: click.echo(m, err=True), clock_start=started)
    m = res.metrics
    test = res.test_score
    click.echo(f"best epoch {res.best_epoch}: val {m['metric']} {m['scores']['val']['main']:.4f}"
               + (f", test {m['metric']} {test:.4f}" if test is not None else ""))
    if res.failures:
        click.echo(f"skipped {len(res.failures)} unreadable images (e.g. {res.failures[0][0]}: "
                   f"{res.failures[0][1]})", err=True)
    click.echo(f"run: {res.out}  (embed with --backbone finetuned:{res.out})")
    if track:
        from featpipe.tracking import track_runs

        for t in track_runs([res.out], track):
            click.echo(t.line(), err=True)


def _is_the_program() -> bool:
    """Whether this process was started as the ``featpipe`` command (not a test runner calling it)."""
    import sys
    from pathlib import Path

    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return argv0.name == "featpipe" or argv0.parts[-2:] == ("featpipe", "__main__.py")
