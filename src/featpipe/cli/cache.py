"""`featpipe cache`: inspect feature caches."""

from __future__ import annotations

import json

import click


@click.group()
def cache() -> None:
    """Inspect feature caches.

    \b
    Examples:
      featpipe cache ls                                   # every cache in ./cache
      featpipe cache ls --cache-dir runs/study/cache
      featpipe cache info cache/photos__efficientnet_lite0__1a2b3c4d5e.h5 --failed
      featpipe cache info cache/photos__efficientnet_lite0__1a2b3c4d5e.h5 --json
    """


@cache.command("ls")
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(file_okay=False))
def ls(cache_dir: str) -> None:
    """One line per cache file: dataset, backbone, rows, state, key."""
    from featpipe.features.cache import list_caches

    rows = list_caches(cache_dir)
    if not rows:
        click.echo(f"no caches in {cache_dir}")
        return
    for r in rows:
        if "dataset" not in r:
            click.echo(f"{r['file']}  {r['state']}")
            continue
        layer = f"@{r['layer']}" if r["layer"] else ""
        click.echo(f"{r['file']}  {r['dataset']}  {r['backbone']}{layer}  rows={r['rows']} ok={r['ok']} "
                   f"failed={r['failed']} dim={r['dim']}  {r['state']}  key={r['key']}")


@cache.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--failed", "show_failed", is_flag=True, help="List every failed image with its reason.")
@click.option("--json", "as_json", is_flag=True, help="Print all attributes as JSON.")
def info(file: str, show_failed: bool, as_json: bool) -> None:
    """Key, config, dataset, versions and row states of one cache file."""
    from featpipe.features.cache import FeatureCache

    c = FeatureCache.open(file, allow_incomplete=True)
    if as_json:
        click.echo(json.dumps({**c.attrs, "summary": c.summary()}, indent=2, default=str))
        return
    s = c.summary()
    click.echo(f"file:      {c.path}")
    click.echo(f"key:       {c.key}")
    click.echo(f"state:     {'complete' if c.attrs.get('completed') else 'incomplete'}")
    click.echo(f"dataset:   {s['dataset']} ({c.dataset.get('source')}), {c.task}, {s['classes']} classes")
    click.echo(f"rows:      {s['rows']} (ok {s['ok']}, failed {s['failed']}), splits {s['splits']}")
    b = c.backbone
    click.echo(f"backbone:  {b['name']} arch={b['arch']} weights={b['weights']} ({b['weights_id']}) "
               f"layer={b['layer']} precision={b['precision']}")
    click.echo(f"features:  {s['feature_dim']}-d, preprocessing {json.dumps(c.config.get('preprocessing'))}")
    t = c.attrs.get("timings", {})
    if t:
        click.echo(f"timings:   {t.get('embed_seconds_total', 0):.1f} s total, last run "
                   f"{t.get('images_per_second_last_run', 0):.1f} img/s on {t.get('device')}")
    click.echo(f"seed:      {c.seed}, split seed {c.attrs.get('split_seed')}")
    click.echo(f"versions:  {json.dumps(c.versions)}")
    failed = [(i, e) for i, e, st in zip(c.ids, c.errors, c.status, strict=True) if st == 2]
    for i, e in failed if show_failed else failed[:5]:
        click.echo(f"  failed: {i}: {e}")
    if failed and not show_failed and len(failed) > 5:
        click.echo(f"  ... {len(failed) - 5} more (--failed lists all)")


@cache.command("prune")
@click.option("--cache-dir", default="cache", show_default=True, type=click.Path(file_okay=False))
@click.option("--models", "models_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Model folder(s) written by fit-head/run; caches their bundles were fitted on are kept.")
@click.option("--pipeline", "pipelines", multiple=True, type=click.Path(dir_okay=False),
              help="Pipeline YAML file(s); caches of the backbones they embed are kept.")
@click.option("--yes", is_flag=True, help="Really delete; without it prune only lists what it would remove.")
def prune(cache_dir: str, models_dirs: tuple[str, ...], pipelines: tuple[str, ...], yes: bool) -> None:
    """Remove caches that no model bundle and no pipeline uses (a dry run unless --yes).

    \b
    Examples:
      featpipe cache prune --models models/ --pipeline pipelines/study.yaml
      featpipe cache prune --cache-dir cache --models models/ --yes
    """
    from featpipe.runs.prune import plan_prune, remove_caches

    backbones = None
    if pipelines:  # a cache of any backbone a pipeline embeds is kept: pruning errs on keeping
        from featpipe.pipeline import load_config

        backbones = {str(b if isinstance(b, str) else b.get("name")) for p in pipelines
                     for b in load_config(p)["backbones"]}
    items = plan_prune(cache_dir, list(models_dirs), backbones)
    gone = [it for it in items if not it.keep]
    for it in items:
        verb = "keep  " if it.keep else ("remove" if yes else "would remove")
        click.echo(f"{verb} {it.path.name}  ({it.reason})")
    if not yes:
        click.echo(f"dry run: {len(gone)} of {len(items)} caches would be removed; pass --yes to delete them")
        return
    freed = remove_caches(items)
    click.echo(f"removed {len(gone)} of {len(items)} caches, {freed / 1e6:.1f} MB freed")
