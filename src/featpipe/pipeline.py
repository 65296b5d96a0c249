"""Whole studies from one config (YAML or dict): dataset -> embed per backbone -> heads -> report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from featpipe.errors import FeaturepipeError


def load_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise FeaturepipeError(f"pipeline file not found: {p}")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise FeaturepipeError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or "data" not in cfg or "backbones" not in cfg:
        raise FeaturepipeError(f"{p}: a pipeline needs at least 'data' and 'backbones'")
    # relative data paths are relative to the pipeline file
    data = cfg["data"]
    if isinstance(data, str):
        data = {"path": data}
    if "path" in data and not Path(data["path"]).is_absolute():
        data["path"] = str((p.parent / data["path"]).resolve())
    cfg["data"] = data
    return cfg


def _manifest(cfg: dict[str, Any], out: Path):
    from featpipe.data import load_dataset
    from featpipe.samples import write_digits

    data = dict(cfg["data"])
    if data.get("sample") == "digits":
        folder = write_digits(out / "data" / "digits", per_class=data.get("per_class"))
        return load_dataset(folder, name=cfg.get("name", "digits"), seed=int(data.get("split_seed", 0)))
    path = data.pop("path", None)
    if not path:
        raise FeaturepipeError("pipeline 'data' needs a 'path' (or 'sample: digits')")
    opts = {k: v for k, v in data.items() if k in ("name", "pattern", "fractions")}
    if "split_seed" in data:
        opts["seed"] = int(data["split_seed"])
    if "fractions" in opts:
        opts["fractions"] = tuple(opts["fractions"])
    opts.setdefault("name", cfg.get("name"))
    return load_dataset(path, **opts)


def run_pipeline(cfg: dict[str, Any], *, progress: bool = True, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run every stage the config names; return the paths it wrote."""
    from featpipe.backbones import resolve_spec, split_layer
    from featpipe.embed import embed_datasets, resolve_device

    out = Path(cfg.get("out", "runs/" + str(cfg.get("name", "study"))))
    out.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(cfg, out)
    echo(f"dataset {manifest.name}: {len(manifest)} images, {manifest.task}, {len(manifest.classes)} classes")
    if manifest.skipped:
        what, why = manifest.skipped[0]
        echo(f"  skipped {len(manifest.skipped)} listed entries (e.g. {what}: {why})")
    cache_dir = Path(cfg.get("cache_dir", out / "cache"))
    caches = []
    specs, batch_sizes = [], []
    for b in cfg["backbones"]:
        b = {"name": b} if isinstance(b, str) else dict(b)
        name, layer = split_layer(b["name"])
        specs.append(resolve_spec(
            name, weights=b.get("weights"), pretrained=b.get("pretrained", True), layer=b.get("layer", layer),
            image_size=b.get("image_size"), precision=b.get("precision", "auto"), seed=int(cfg.get("seed", 0)),
            device=resolve_device(cfg.get("device", "auto")),
        ))
        batch_sizes.append(b.get("batch_size"))
    # one pass over the images feeds every backbone (each image decoded once)
    results = embed_datasets(manifest, specs, cache_dir=cache_dir, progress=progress, device=cfg.get("device", "auto"),
                             seed=int(cfg.get("seed", 0)), batch_size=next((s for s in batch_sizes if s), None))
    for spec, res in zip(specs, results, strict=True):
        echo(f"{spec.tag()}: embedded {res.n_computed}, reused {res.n_reused}, failed {res.n_failed} -> {res.path}")
        caches.append(res.path)
    result: dict[str, Any] = {"caches": [str(c) for c in caches]}
    heads = cfg.get("heads", ["all"])
    if heads:
        result["models"] = _fit_heads(cfg, caches, heads, out / "models", echo)
    if cfg.get("report", True):
        from featpipe.report import build_report

        report_cfg = cfg.get("report") if isinstance(cfg.get("report"), dict) else {}
        index = build_report(caches=caches, models_dir=out / "models", out=out / "report",
                             human_baseline=report_cfg.get("human_baseline"))
        echo(f"report: {index}")
        result["report"] = str(index)
    return result


def _fit_heads(cfg: dict[str, Any], caches: list[Path], heads: list[str], models_dir: Path,
               echo: Callable[[str], Any]) -> list[str]:
    from featpipe.cache import FeatureCache
    from featpipe.fit import fit_cache, write_run
    from featpipe.metrics import format_table

    fit = dict(cfg.get("fit", {}))
    written, results = [], []
    for path in caches:
        cache = FeatureCache.open(path)
        for head in heads:
            for run in fit_cache(cache, head, metric=fit.get("metric"), class_weight=fit.get("class_weight"),
                                 refit=fit.get("refit", "train"), preprocess=fit.get("preprocess", "standardize"),
                                 seed=int(cfg.get("seed", 0)), min_positives=int(fit.get("min_positives", 5))):
                written.append(str(write_run(run, models_dir)))
                results.append(run.metrics)
    if results:
        echo(format_table(results))
    return written
