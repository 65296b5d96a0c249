"""`featpipe finetune`: train a backbone end to end (LP-FT) or a small CNN from scratch."""

from __future__ import annotations

import click

from featpipe.backbones import PRECISION_CHOICES
from featpipe.cli._common import FRACTION, IMAGE_SIZE, NON_NEGATIVE, POSITIVE, dataset_options, track_option
from featpipe.finetune import SCHEDULES
from featpipe.heads.metrics import METRICS


@click.command("finetune")
@dataset_options
@click.option("--backbone", "-b", default="efficientnet_lite0", show_default=True,
              help="Registry name, timm model name, or scratch-cnn (a small CNN from random init).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State-dict file for the architecture.")
@click.option("--no-pretrained", is_flag=True, help="Start from a seeded random init.")
@click.option("--layer", default=None, help="Cut the backbone at this module (as in embed) and train up to it.")
@click.option("--image-size", type=IMAGE_SIZE, default=None,
              help="Input size. Default: 128 for small images (<= 64px) on pretrained nets, else the model's; "
              "scratch-cnn: the images' own size.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: history.json, best.pt, last.pt, metrics.json, predictions.npz, model.joblib.")
@click.option("--recipe", type=click.Choice(["lp-ft", "ft"]), default=None,
              help="lp-ft: linear probe on frozen features first, then end to end (default for pretrained); "
              "ft: end to end from the start.")
@click.option("--unfreeze", default="all", show_default=True,
              help="head | last-N | all: which backbone stages train (featpipe backbones --stages NAME).")
@click.option("--epochs", type=POSITIVE, default=None,
              help="Maximum epochs (default 10; scratch-cnn 30; with --budget: as many as fit).")
@click.option("--budget", default=None, metavar="DURATION",
              help="Time budget, e.g. 30m, 90s, 1h: the run measures its first steps, plans epochs and "
              "schedule to end (start-up, linear probe and final evaluation included) within it, and stops "
              "early with the best epoch if the machine slows down.")
@click.option("--batch-size", type=POSITIVE, default=None,
              help="Default: 128 for inputs <= 64px, 64 up to 96px, else 32.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Head learning rate (default 1e-3; scratch-cnn 3e-3).")
@click.option("--backbone-lr-mult", type=click.FloatRange(min=0), default=None,
              help="Backbone lr = lr x this (default 0.25; scratch-cnn 1).")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True, help="SGD momentum.")
@click.option("--nesterov/--no-nesterov", default=True, show_default=True, help="SGD Nesterov momentum.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="Default 0.05 (adamw), 5e-4 (sgd).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine",
              show_default=True)
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--clip-grad", type=click.FloatRange(min=0), default=1.0, show_default=True, help="Gradient norm clip (0: off).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True, help="Single-label tasks.")
@click.option("--pos-weight", type=click.Choice(["none", "auto"]), default="none", show_default=True,
              help="Multilabel BCE: auto weights positives by negatives/positives per label (capped at 100).")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True)
@click.option("--metric", type=click.Choice(METRICS), default=None, help="Validation metric (early stopping).")
@click.option("--augment", type=click.Choice(["none", "light", "strong"]), default="light", show_default=True,
              help="Training-split augmentation preset; the switches below override single parts.")
@click.option("--hflip", type=FRACTION, default=None, help="Horizontal flip probability.")
@click.option("--scale", type=click.FloatRange(0, 1, min_open=True), default=None, help="Min area of the random resized crop (zoom).")
@click.option("--rotate", type=click.FloatRange(0, 180), default=None, help="Max rotation in degrees.")
@click.option("--shift", type=FRACTION, default=None, help="Max shift as a fraction of the size.")
@click.option("--color-jitter", type=click.FloatRange(min=0), default=None, help="Brightness/contrast/saturation jitter.")
@click.option("--grayscale", type=FRACTION, default=None, help="Random grayscale probability.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help="Dropout before the classifier (default 0; scratch 0.2).")
@click.option("--bn", type=click.Choice(["frozen", "train"]), default=None,
              help="BatchNorm statistics: frozen (default for pretrained weights: kept as the linear probe "
              "saw them) or train (default from random init).")
@click.option("--width", type=POSITIVE, default=32, show_default=True, help="scratch-cnn: channels of the first block.")
@click.option("--depth", type=POSITIVE, default=3, show_default=True, help="scratch-cnn: number of double-conv blocks.")
@click.option("--in-channels", type=click.Choice(["1", "3"]), default=None,
              help="scratch-cnn: 1 = grayscale-native (default when every sampled image is gray, else 3).")
@click.option("--patience", type=POSITIVE, default=None, help="Early-stopping patience in epochs (default 3; scratch-cnn 6).")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
              help="Autocast: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--workers", type=NON_NEGATIVE, default=None, help="Image decode workers (default: by device).")
@click.option("--decode-once/--no-decode-once", default=None,
              help="Decode the training images once into memory and augment whole batches in torch "
              "(default: when they fit in an eighth of the RAM and share one size).")
@click.option("--threads", type=POSITIVE, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Feature caches for the linear probe (an existing one at the same input size is reused).")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True)
@click.option("--checkpoint-every", type=NON_NEGATIVE, default=0, show_default=True,
              help="Also save the resume state every N training steps (0: at epoch ends only).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--force", is_flag=True, help="Start over even if --out holds a run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@track_option
def finetune(data, name, split_seed, fractions, pattern, label_sep, label_col, path_col, split_col, unlabeled_empty,
             backbone, weights, no_pretrained, layer, image_size, out,
             recipe, unfreeze, epochs, budget, batch_size, optimizer, lr, backbone_lr_mult, momentum, nesterov,
             weight_decay, schedule, warmup_epochs, clip_grad, label_smoothing, pos_weight, class_weight, metric,
             augment, hflip, scale, rotate, shift, color_jitter, grayscale, dropout, bn, width, depth, in_channels,
             patience, precision, device, workers, decode_once, threads, cache_dir, seed, checkpoint_every, resume, force, quiet,
             track):
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
      featpipe embed --data cifar/ --backbone finetuned:runs/lite0
    """
    import time

    started = time.monotonic()
    import torch

    from featpipe.cli._common import open_dataset
    from featpipe.finetune import FinetuneConfig, seconds_since_process_start
    from featpipe.finetune import finetune as run_finetune

    if _is_the_program():  # the budget counts the interpreter's start-up and imports too
        started = time.monotonic() - seconds_since_process_start()

    if threads:
        torch.set_num_threads(threads)
    manifest = open_dataset(data, name=name, split_seed=split_seed, fractions=fractions, pattern=pattern,
                            label_sep=label_sep, label_col=label_col, path_col=path_col, split_col=split_col,
                            unlabeled_empty=unlabeled_empty)
    counts = ", ".join(f"{k} {v}" for k, v in manifest.split_counts().items())
    click.echo(f"dataset {manifest.name}: {len(manifest)} images ({counts}), {manifest.task}, "
               f"{len(manifest.classes)} classes", err=True)
    cfg = FinetuneConfig(
        backbone=backbone, weights=weights, pretrained=not no_pretrained, layer=layer, image_size=image_size,
        recipe=recipe, unfreeze=unfreeze, epochs=epochs, budget=budget, batch_size=batch_size, optimizer=optimizer, lr=lr,
        backbone_lr_mult=backbone_lr_mult, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
        schedule=schedule, warmup_epochs=warmup_epochs, clip_grad=clip_grad or None,
        label_smoothing=label_smoothing, pos_weight=pos_weight,
        class_weight=None if class_weight == "none" else class_weight, metric=metric, augment=augment,
        hflip=hflip, scale=scale, rotate=rotate, shift=shift, color_jitter=color_jitter, grayscale=grayscale,
        dropout=dropout, bn=bn, width=width, depth=depth, in_channels=int(in_channels) if in_channels else None,
        patience=patience, seed=seed, precision=precision, device=device, num_workers=workers,
        decode_once=decode_once, cache_dir=cache_dir,
        checkpoint_every=checkpoint_every,
    )
    res = run_finetune(manifest, cfg, out, resume=resume, force=force, progress=not quiet,
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
