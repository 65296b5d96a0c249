"""`featpipe embed`: run a frozen backbone over a dataset once, into an HDF5 feature cache."""

from __future__ import annotations

import click

from featpipe.cli._common import NON_NEGATIVE, POSITIVE, backbone_options, dataset_options, open_dataset


@click.command()
@dataset_options
@backbone_options(multiple=True)
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(file_okay=False),
              help="Folder of feature caches (one HDF5 file per dataset x backbone config).")
@click.option("--cache-file", default=None, type=click.Path(dir_okay=False),
              help="Explicit cache file instead of the automatic name in --cache-dir.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--batch-size", type=POSITIVE, default=None, help="Default: 8 on CPU (fastest there), 256 on GPU.")
@click.option("--workers", type=NON_NEGATIVE, default=None,
              help="Decoders (default: a thread per core on CPU, decoding each batch between forward passes; "
              "on GPU a process per core but one, up to 16, decoding ahead of it; 0 decodes inline).")
@click.option("--decode", type=click.Choice(["auto", "cpu", "device", "device-jpeg"]), default="auto",
              show_default=True,
              help="Where images are resized: cpu (PIL, in the decoders), device (decoded by PIL; images smaller "
              "than the model's input resized and cropped on the model's device with PIL's arithmetic: the same "
              "features) or device-jpeg (plain JPEGs decoded there too, batched; nvJPEG on CUDA gives slightly "
              "different pixels, so its caches are kept apart). auto: device on CUDA when the backbone allows, "
              "else cpu.")
@click.option("--dtype", "feature_dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage type of the cached features.")
@click.option("--tta", type=click.Choice(["hflip"]), default=None,
              help="Test-time augmentation: cache the mean of the features of each image and its mirror.")
@click.option("--align", type=click.Choice(["faces"]), default=None,
              help="Detect the face (YuNet) and align it by 5 landmarks first; no face -> a failed row.")
@click.option("--force", is_flag=True, help="Recompute every row, discarding the existing cache.")
@click.option("--retry-failed", is_flag=True,
              help="Retry every failed row (by default only I/O failures and changed files are retried).")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Torch seed (random-init backbones).")
@click.option("--write-every", type=POSITIVE, default=256, show_default=True,
              help="Rows per cache write (at most this many are redone after a crash).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: decode in Ray tasks and run the backbone in a Ray actor pool (pip install featpipe[ray]).")
@click.option("--address", "ray_address", default=None,
              help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local Ray instance.")
@click.option("--ray-actors", type=POSITIVE, default=None,
              help="Backbone actors (default: one per GPU of the cluster, else one per 8 CPUs).")
def embed(data, name, split_seed, fractions, pattern, label_sep, label_col, path_col, split_col,
          unlabeled_empty, backbone, weights, no_pretrained, layer, image_size,
          precision, cache_dir, cache_file, device, batch_size, workers, decode, feature_dtype, tta, align, force,
          retry_failed, seed, write_every, quiet, engine, ray_address, ray_actors):
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
    from featpipe.backbones import resolve_spec, split_layer
    from featpipe.features.embed import embed_datasets
    from featpipe.hardware import precision_note, resolve_device

    if len(backbone) > 1 and cache_file:
        raise click.UsageError("--cache-file names one cache; with several backbones use --cache-dir")
    if len(backbone) > 1 and (weights or layer):
        raise click.UsageError("--weights and --layer apply to one backbone; with several, use NAME@LAYER "
                               "or a pipeline file (featpipe run) for per-backbone options")
    if engine == "ray":
        from featpipe.features.ray import require_ray

        require_ray()  # before any dataset scan
    manifest = open_dataset(data, name=name, split_seed=split_seed, fractions=fractions, pattern=pattern,
                            cache_dir=cache_dir, label_sep=label_sep, label_col=label_col, path_col=path_col, split_col=split_col,
                            unlabeled_empty=unlabeled_empty)
    dev = resolve_device(device) if engine == "local" else device.replace("auto", "cpu")
    specs = []
    for text in backbone:
        bname, blayer = split_layer(text)
        specs.append(resolve_spec(bname, weights=weights, pretrained=not no_pretrained, layer=blayer or layer,
                                  image_size=image_size, precision=precision, seed=seed, device=dev,
                                  tta=tta, align=align))
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
    results = embed_datasets(manifest, specs, cache_dir=cache_dir, cache_files=[cache_file] if cache_file else None,
                             device=device, batch_size=batch_size, num_workers=workers,
                             feature_dtype=feature_dtype, force=force, retry_failed=retry_failed,
                             progress=not quiet, seed=seed, write_every=write_every, engine=engine,
                             ray_address=ray_address, ray_actors=ray_actors, decode=decode)
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
