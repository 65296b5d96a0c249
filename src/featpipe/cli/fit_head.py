"""`featpipe fit-head`: fit and tune heads on cached features; write models, metrics and predictions."""

from __future__ import annotations

from pathlib import Path

import click

from featpipe.cli._common import NON_NEGATIVE, LazyChoice, backbone_options, csv_options, track_option
from featpipe.heads.metrics import METRICS


def _find_cache_for(data, name, split_seed, fractions, pattern, csv_opts, backbone, weights, no_pretrained, layer,
                    image_size, precision, seed, cache_dir) -> Path:
    from featpipe.backbones import resolve_spec
    from featpipe.cli._common import open_dataset
    from featpipe.errors import CacheError
    from featpipe.features.cache import find_cache
    from featpipe.hardware import auto_precision

    manifest = open_dataset(data, name=name, split_seed=split_seed, fractions=fractions, pattern=pattern,
                            **csv_opts)

    def spec_at(prec: str):
        return resolve_spec(backbone, weights=weights, pretrained=not no_pretrained, layer=layer,
                            image_size=image_size, precision=prec, seed=seed, device="auto")

    # the identity of a cache leaves precision out, so `auto` is resolved (which imports torch to look
    # for a GPU) only when several caches differ by it: heads that need no torch start without it
    spec = spec_at("fp32" if precision == "auto" else precision)
    path = find_cache(cache_dir, manifest, spec, precision=precision,
                      auto_precision=lambda: auto_precision("auto"))
    if path is None:
        spec = spec_at(precision)
        split = manifest.split_identity()
        how = (f" (split seed {split['split_seed']}, fractions {','.join(f'{x:g}' for x in split['split_fractions'])})"
               if split else "")
        raise CacheError(f"no complete cache for {data}{how} with backbone {spec.tag()} in {cache_dir}; "
                         f"run: featpipe embed --data {data} --backbone {backbone} with the same options")
    return path


def _check_cv(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value == 1:
        raise click.BadParameter("1 fold is no cross-validation; give 0 (never) or K >= 2", param_hint="--cv")
    return value


@click.command("fit-head")
@click.option("--cache", "caches", multiple=True, type=click.Path(dir_okay=False),
              help="Feature cache file (repeat for several caches).")
@click.option("--data", "-d", default=None, type=click.Path(),
              help="Instead of --cache: the dataset whose cache (for --backbone) is looked up in --cache-dir.")
@click.option("--name", default=None, help="With --data: dataset name as given to featpipe embed.")
@click.option("--split-seed", type=NON_NEGATIVE, default=0, show_default=True, help="With --data: as given to embed.")
@click.option("--fractions", default="0.7,0.15,0.15", show_default=True, help="With --data: as given to embed.")
@click.option("--pattern", default=None, help="With --data: as given to embed.")
@csv_options
@backbone_options
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Folder searched for the cache with --data.")
@click.option("--head", "heads", type=LazyChoice("featpipe.heads:HEAD_CHOICES"), multiple=True,
              default=["logistic"], show_default=True, help="Head to fit (repeat for several); 'all' fits every head.")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="The metric that selects hyper-parameters, early-stops (mlp, lgbm), tunes thresholds and "
              "ranks runs. Default: f1 (binary), accuracy (multiclass), micro_f1 (multilabel).")
@click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True,
              help="'balanced' weights classes inversely to their frequency (binary: pos_weight = neg/pos).")
@click.option("--refit", type=click.Choice(["train", "train+val"]), default="train+val", show_default=True,
              help="Rows the chosen configuration is finally fitted on. train+val: every labelled row, with "
              "thresholds tuned on out-of-fold probabilities over train+val (5-fold, seeded); train: the "
              "model scored on val, thresholds tuned on val. Out of core: train.")
@click.option("--cv", type=click.IntRange(min=0), default=None, callback=_check_cv,
              help="Choose hyper-parameters by K-fold CV over train+val instead of the val split; implies "
              "--refit train+val. Default: 5-fold only where the val split is too small to select on (fewer "
              "than 30 rows, or a class / label with fewer than 5); 0: never.")
@click.option("--bootstrap", "n_bootstrap", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Resamples of the test rows for each test score's 95% interval (seeded by --seed).")
@click.option("--preprocess", type=click.Choice(["standardize", "l2", "none"]), default="standardize",
              show_default=True, help="Feature preprocessing before the head.")
@click.option("--min-positives", type=NON_NEGATIVE, default=5, show_default=True,
              help="Multilabel: labels with fewer val positives use the global threshold.")
@click.option("--thresholds", "threshold_mode", type=click.Choice(["per-class", "global"]), default="per-class",
              show_default=True, help="Multilabel: which tuned thresholds the model uses (both are recorded).")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True,
              help="Seed of every head (same seed, same model); with --data and --no-pretrained also the "
              "random-init backbone's seed (pretrained weights have none).")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory budget for a head's fit (e.g. 8GB; default: half the RAM). Caches whose features "
              "would not fit are fitted out of core, read from disk in slabs.")
@click.option("--out", "out_dir", default="models", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: OUT/<cache stem>/<head>/{model.joblib,metrics.json,predictions.npz}.")
@track_option
def fit_head(caches, data, name, split_seed, fractions, pattern, label_sep, label_col, path_col, split_col,
             unlabeled_empty, backbone, weights, no_pretrained, layer, image_size, precision, cache_dir, heads,
             metric, class_weight, refit, cv, n_bootstrap, preprocess, min_positives, threshold_mode, seed,
             max_memory, out_dir, track):
    """Fit heads on cached features, tune them on validation, score them once on test.

    \b
    Examples:
      featpipe fit-head --cache cache/photos__efficientnet_lite0__ab12cd34ef.h5 --head all
      featpipe fit-head --data photos/ --backbone efficientnet_lite0 --head lgbm --refit train
      featpipe fit-head --cache a.h5 --cache b.h5 --head logistic --class-weight balanced --out models/
      featpipe fit-head --cache small.h5 --head all --metric macro_f1 --cv 5
      featpipe fit-head --cache a.h5 --head all --track mlflow

    With --data, the cache is found by dataset (path, split seed and fractions) and backbone
    (weights, layer, image size): a single one is used whatever --precision made it; of several,
    the one --precision auto means on this machine.
    """
    from featpipe.errors import FeaturepipeError
    from featpipe.folders import writable_folder
    from featpipe.heads import head_names
    from featpipe.heads.metrics import format_table
    from featpipe.runs.fit import fit_cache, open_cache, write_run

    paths = [Path(c) for c in caches]
    if data:
        csv_opts = dict(label_sep=label_sep, label_col=label_col, path_col=path_col, split_col=split_col,
                        unlabeled_empty=unlabeled_empty)
        paths.append(_find_cache_for(data, name, split_seed, fractions, pattern, csv_opts, backbone, weights,
                                     no_pretrained, layer, image_size, precision, seed, cache_dir))
    if not paths:
        raise click.UsageError("give --cache FILE (repeatable) or --data PATH with --backbone NAME")
    writable_folder(out_dir, "output")  # before any fit, not after it
    results, written = [], []
    for p in paths:
        cache = open_cache(p, max_memory)
        if not cache.in_memory:
            n, dim = cache.features.shape
            click.echo(f"{p.name}: {n} x {dim} features exceed the memory budget: fitting out of core "
                       "(features read from disk in slabs; the final model is fitted on train)", err=True)
        names = list(dict.fromkeys(n for h in heads for n in head_names(h)))  # in order, each once
        try:
            runs = [r for h in names for r in fit_cache(
                cache, h, metric=metric, class_weight=None if class_weight == "none" else class_weight, refit=refit,
                preprocess=preprocess, seed=seed, min_positives=min_positives, threshold_mode=threshold_mode, cv=cv,
                n_bootstrap=n_bootstrap)]
        except FeaturepipeError as e:
            raise type(e)(f"{p.name}: {e}") from None
        for r in runs:
            d = write_run(r, out_dir)
            results.append(r.metrics)
            written.append(d)
            for note in (r.metrics["selection"].get(k) for k in ("auto_cv", "refit_note")):
                if note:
                    click.echo(f"  {r.head}: {note}", err=True)
            for s in r.metrics["skipped_labels"]:
                click.echo(f"  {r.head}: label {s['label']!r} skipped: {s['reason']}", err=True)
            click.echo(f"wrote {d}", err=True)
    click.echo(format_table(results))
    if track:
        from featpipe.tracking import track_runs

        for t in track_runs(written, track):
            click.echo(t.line(), err=True)
