"""`featpipe predict`: labels and per-class probabilities for images with a saved model bundle."""

from __future__ import annotations

import click

from featpipe.cli._common import POSITIVE


@click.command("predict")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="model.joblib written by featpipe fit-head.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_csv", default=None, type=click.Path(dir_okay=False),
              help="Write a CSV (path, label, error, one probability column per class) instead of a table.")
@click.option("--no-verify", is_flag=True, help="Skip the .sha256 checksum check of the model file.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--batch-size", type=POSITIVE, default=None, help="Embedding batch size.")
def predict(model_path, paths, out_csv, no_verify, device, batch_size):
    """Predict labels for images (files or folders, searched recursively).

    Images that cannot be read are listed with the reason and counted; they do not stop the run, but
    when none could be read the command fails (exit 2). Multi-label
    models print (and write) the predicted labels joined by ';' ('-' when none passes its threshold).
    The backbone weights are found by their hash (see docs/heads.md: portable bundles).

    \b
    Examples:
      featpipe predict --model models/run/logistic/model.joblib photo1.jpg photo2.jpg
      featpipe predict --model models/run/lgbm/model.joblib new_photos/ --out predictions.csv
    """
    from featpipe.bundle.io import load_model
    from featpipe.errors import ModelError
    from featpipe.heads.model import expand_image_paths
    from featpipe.runs.predictions import label_text, write_predictions_csv

    model = load_model(model_path, verify=not no_verify)
    files = expand_image_paths(list(paths))
    if not files:
        raise ModelError("no image files found in the given paths")
    model.set_params(embed_device=device, embed_batch_size=batch_size)
    proba = model.predict_proba(files)
    labels = model.labels_from_proba(proba)
    errors = dict(model.last_errors_)
    n_bad = len(model.last_errors_)
    classes = [str(c) for c in model.classes_]

    if out_csv:
        write_predictions_csv(out_csv, files, proba, labels, errors, classes)
        click.echo(f"wrote {out_csv}: {len(files)} images, {n_bad} unreadable", err=True)
    else:
        top = min(3, len(classes))
        for p, lab, row in zip(files, labels, proba, strict=True):
            if p in errors:
                continue
            best = sorted(range(len(classes)), key=lambda k: -row[k])[:top]
            probs = "  ".join(f"{classes[k]}={row[k]:.3f}" for k in best)
            click.echo(f"{p}\t{label_text(lab) or '-'}\t{probs}")
    for p, reason in errors.items():
        click.echo(f"unreadable: {p}: {reason}", err=True)
    if n_bad == len(files):
        raise ModelError(f"nothing predicted: all {n_bad} input images were unreadable")
    if n_bad:
        click.echo(f"{n_bad} of {len(files)} input images unreadable; predicted {len(files) - n_bad}", err=True)
