"""`featpipe fit-head`: fit and tune heads on cached features; write models, metrics and predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from featpipe.backbones.config import BackboneConfig
from featpipe.cli._common import (
    NON_NEGATIVE,
    LazyChoice,
    backbone_options,
    build_section,
    config_options,
    dataset_options,
    track_option,
)
from featpipe.runs.config import FitConfig


def _find_cache_for(data: str, data_config: Any, backbone: BackboneConfig, seed: int, cache_dir: str) -> Path:
    from featpipe.cli._common import open_dataset
    from featpipe.errors import CacheError
    from featpipe.features.cache import find_cache
    from featpipe.hardware import auto_precision

    manifest = open_dataset(data, data_config, cache_dir)
    precision = backbone.precision

    def spec_at(prec: str):
        return backbone.model_copy(update={"precision": prec}).spec(seed=seed, device="auto")

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
                         f"run: featpipe embed --data {data} --backbone {backbone.name} with the same options")
    return path


@click.command("fit-head")
@click.option("--cache", "caches", multiple=True, type=click.Path(dir_okay=False),
              help="Feature cache file (repeat for several caches).")
@dataset_options(required=False)
@backbone_options
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Folder searched for the cache with --data.")
@click.option("--head", "heads", type=LazyChoice("featpipe.heads:HEAD_CHOICES"), multiple=True,
              default=["logistic"], show_default=True, help="Head to fit (repeat for several); 'all' fits every head.")
@config_options(FitConfig, into="fit_config", aliases={"threshold_mode": "--thresholds"})
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True,
              help="Seed of every head (same seed, same model); with --data and --no-pretrained also the "
              "random-init backbone's seed (pretrained weights have none).")
@click.option("--out", "out_dir", default="models", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: OUT/<cache stem>/<head>/{model.joblib,metrics.json,predictions.npz}.")
@track_option
def fit_head(caches, data, data_config, backbone, weights, pretrained, layer, image_size, precision, tta, align,
             cache_dir, heads, fit_config, seed, out_dir, track):
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
        bb = build_section(BackboneConfig, {"name": backbone, "weights": weights, "pretrained": pretrained,
                                            "layer": layer, "image_size": image_size, "precision": precision,
                                            "tta": tta, "align": align})
        paths.append(_find_cache_for(data, data_config, bb, seed, cache_dir))
    if not paths:
        raise click.UsageError("give --cache FILE (repeatable) or --data PATH with --backbone NAME")
    writable_folder(out_dir, "output")  # before any fit, not after it
    results, written = [], []
    for p in paths:
        cache = open_cache(p, fit_config.max_memory)
        if not cache.in_memory:
            n, dim = cache.features.shape
            click.echo(f"{p.name}: {n} x {dim} features exceed the memory budget: fitting out of core "
                       "(features read from disk in slabs; the final model is fitted on train)", err=True)
        names = list(dict.fromkeys(n for h in heads for n in head_names(h)))  # in order, each once
        try:
            runs = [r for h in names for r in fit_cache(cache, h, fit_config, seed=seed)]
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
