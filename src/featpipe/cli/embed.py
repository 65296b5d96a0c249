"""`featpipe embed`: run a frozen backbone over a dataset once, into an HDF5 feature cache."""

from __future__ import annotations

import click

from featpipe.backbones.config import BackboneConfig
from featpipe.cli._common import (
    NON_NEGATIVE,
    POSITIVE,
    backbone_options,
    build_section,
    config_options,
    dataset_options,
    open_dataset,
)
from featpipe.features.config import EmbedConfig


@click.command()
@dataset_options
@backbone_options(multiple=True)
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Folder of feature caches (one HDF5 file per dataset x backbone config).")
@click.option("--cache-file", default=None, type=click.Path(dir_okay=False),
              help="Explicit cache file instead of the automatic name in --cache-dir.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@config_options(EmbedConfig, into="embed_config", aliases={"feature_dtype": "--dtype"})
@click.option("--force", is_flag=True, help="Recompute every row, discarding the existing cache.")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Torch seed (random-init backbones).")
@click.option("--write-every", type=POSITIVE, default=256, show_default=True,
              help="Rows per cache write (at most this many are redone after a crash).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def embed(data, data_config, backbone, weights, pretrained, layer, image_size, precision, tta, align, cache_dir,
          cache_file, device, embed_config, force, seed, write_every, quiet):
    """Embed every image of a dataset once into a resumable feature cache.

    Finished rows are kept if the run is interrupted (run the same command to resume), images
    added later are embedded on the next run, and changed images are recomputed. With several
    --backbone options each image is read and decoded once and fed to every backbone, into one
    cache per backbone (the same caches as separate runs would write).

    \b
    Examples:
      featpipe embed --data photos/ --backbone efficientnet_lite0
      featpipe embed --data photos/ --backbone efficientnet_lite0 --backbone resnet50@layer3
      featpipe embed --data faces/ --backbone vgg16 --weights vggface.pth --layer block4_pool
      featpipe embed --data cifar.npz --backbone resnet50 --no-pretrained --image-size 64
      featpipe embed --data faces.csv --label-col attributes --label-sep ';' --path-col file
      featpipe embed --data /shared/photos --engine ray --address auto
      featpipe embed --data faces/ --backbone sface --align faces --tta hflip
    """
    from featpipe.features.embed import embed_datasets
    from featpipe.hardware import precision_note, resolve_device

    if len(backbone) > 1 and cache_file:
        raise click.UsageError("--cache-file names one cache; with several backbones use --cache-dir")
    if len(backbone) > 1 and (weights or layer):
        raise click.UsageError("--weights and --layer apply to one backbone; with several, use NAME@LAYER "
                               "or a pipeline file (featpipe run) for per-backbone options")
    engine = embed_config.engine
    if engine == "ray":
        from featpipe.features.ray import require_ray

        require_ray()  # before any dataset scan
    manifest = open_dataset(data, data_config, cache_dir)
    dev = resolve_device(device) if engine == "local" else device.replace("auto", "cpu")
    configs = [build_section(BackboneConfig, {"name": text, "weights": weights, "pretrained": pretrained,
                                              "layer": layer, "image_size": image_size, "precision": precision,
                                              "tta": tta, "align": align}) for text in backbone]
    specs = [c.spec(seed=seed, device=dev) for c in configs]
    counts = ", ".join(f"{k} {v}" for k, v in manifest.split_counts().items())
    click.echo(f"dataset {manifest.name}: {len(manifest)} images ({counts}), {manifest.task}, "
               f"{len(manifest.classes)} classes", err=True)
    if manifest.split_summary():
        click.echo(f"  {manifest.split_summary()}", err=True)
    if manifest.skipped:
        click.echo(f"  skipped {len(manifest.skipped)} listed entries (e.g. {manifest.skipped[0][0]}: "
                   f"{manifest.skipped[0][1]})", err=True)
    note = precision_note(specs[0].precision, dev, precision) if engine == "local" else None
    if note:
        click.echo(note, err=True)
    results = embed_datasets(manifest, specs, embed_config, cache_dir=cache_dir,
                             cache_files=[cache_file] if cache_file else None, device=device, force=force,
                             progress=not quiet, seed=seed, write_every=write_every)
    for spec, res in zip(specs, results, strict=True):
        rate = f" at {res.images_per_second:.1f} img/s" if res.n_computed else ""
        who = f"{spec.tag()}: " if len(specs) > 1 else ""
        click.echo(f"{who}embedded {res.n_computed} images{rate}, reused {res.n_reused}, failed {res.n_failed}")
        if res.n_damaged:
            click.echo(f"  {res.n_damaged} rows failed their checksum (the cache file was damaged): embedded again")
        for img_id, reason in res.failures[:10]:
            click.echo(f"  failed: {img_id}: {reason}")
        if res.n_failed > 10:
            click.echo(f"  ... and {res.n_failed - 10} more (featpipe cache info {res.path})")
        click.echo(f"cache: {res.path}")
