"""Does `--tta hflip` help? Logistic-head test score with plain vs mirror-averaged features.

Usage:
    python benchmarks/tta.py [--data-root ../shared/data] [--per-class 60] [--photos 1500]
        [--backbone efficientnet_lite0] [--out runs/bench-tta]

Each shared dataset is subsampled (a seeded, class-balanced subset of cifar10-small's train and test
folders; N images spread over photos-multilabel with the original annotation lists) into --out and
fitted with the logistic head twice on the same split: on the plain cache, and on `--tta hflip`
features. Prints one row per dataset. Nothing here is run by the test suite.

By default the hflip features are computed as (plain + mirrored) / 2 from the plain cache and one
extra forward pass of the mirrored images: the same numbers `embed --tta hflip` stores (the test
suite pins that equality) at half its cost on a loaded machine. `--full` embeds a real
`--tta hflip` cache instead.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def subset_cifar(src: Path, dst: Path, per_class: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for split, n in (("train", per_class), ("test", max(per_class // 2, 10))):
        for cls in sorted(p.name for p in (src / split).iterdir() if p.is_dir()):
            files = sorted((src / split / cls).glob("*.jpg"))
            (dst / split / cls).mkdir(parents=True, exist_ok=True)
            for f in rng.sample(files, min(n, len(files))):
                link = dst / split / cls / f.name
                if not link.exists():
                    os.symlink(f, link)
    return dst


def subset_photos(src: Path, dst: Path, n: int) -> Path:
    (dst / "images").mkdir(parents=True, exist_ok=True)
    if not (dst / "annotations").exists():
        os.symlink(src / "annotations", dst / "annotations")
    files = sorted((src / "images").glob("*.jpg"), key=lambda p: int(p.stem[2:]))
    step = max(1, len(files) // n)  # spread over the natural train and test parts
    chosen = {f.name: f for f in files[::step][:n]}
    for link in (dst / "images").iterdir():
        if link.name not in chosen:  # left by a run with another --photos
            link.unlink()
    for name, f in chosen.items():
        if not (dst / "images" / name).exists():
            os.symlink(f, dst / "images" / name)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--per-class", type=int, default=60, help="cifar10-small train images per class")
    ap.add_argument("--photos", type=int, default=1500, help="photos-multilabel images")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--out", default="runs/bench-tta")
    ap.add_argument("--full", action="store_true", help="embed a real --tta hflip cache (2 forwards per image)")
    args = ap.parse_args()

    from featpipe.backbones import resolve_spec
    from featpipe.data import load_dataset
    from featpipe.features.cache import FeatureCache
    from featpipe.features.embed import embed_dataset
    from featpipe.runs.fit import fit_cache

    root, out = Path(args.data_root), Path(args.out)
    sets = []
    if (root / "cifar10-small").exists():
        d = subset_cifar(root / "cifar10-small", out / "data" / "cifar10-sub", args.per_class)
        sets.append(("cifar10-small", load_dataset(d, name="cifar10-sub")))
    if (root / "photos-multilabel").exists():
        d = subset_photos(root / "photos-multilabel", out / "data" / "photos-sub", args.photos)
        sets.append(("photos-multilabel", load_dataset(d, name="photos-sub", pattern="im{id}.jpg")))
    print(f"{'dataset':20} {'images':>6} {'test':>5} {'metric':>9} {'plain':>7} {'hflip':>7} {'gain':>7} "
          f"{'embed s plain/hflip':>20}")
    for label, manifest in sets:
        spec = resolve_spec(args.backbone)
        t0 = time.perf_counter()
        plain_cache = FeatureCache.open(embed_dataset(manifest, spec, cache_dir=out / "cache", progress=False).path)
        plain_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.full:
            res = embed_dataset(manifest, resolve_spec(args.backbone, tta="hflip"), cache_dir=out / "cache",
                                progress=False)
            tta_cache = FeatureCache.open(res.path)
        else:
            tta_cache = FeatureCache.open(plain_cache.path)
            tta_cache.features = (plain_cache.features + mirrored(plain_cache, spec, out / "mirrored")) / 2
        tta_s = time.perf_counter() - t0
        scores = []
        for cache in (plain_cache, tta_cache):
            (run,) = fit_cache(cache, "logistic", seed=0)
            scores.append(run.metrics["scores"]["test"]["main"])
            metric = run.metrics["metric"]
        n_test = int((plain_cache.splits == "test").sum())
        p, h = scores
        print(f"{label:20} {len(manifest):6d} {n_test:5d} {metric:>9} {p:7.4f} {h:7.4f} {h - p:+7.4f} "
              f"{plain_s:9.0f}/{tta_s:.0f}", flush=True)


def mirrored(cache, spec, folder: Path):
    """Features of the horizontally mirrored images, in cache row order (saved to resume)."""
    import numpy as np

    from featpipe.backbones import load_backbone
    from featpipe.features.embed import run_backbone

    f = folder / (Path(cache.path).stem + ".npy")
    if f.exists():
        return np.load(f)
    backbone = load_backbone(spec, "cpu")
    plain = backbone.forward
    backbone.forward = lambda batch: plain(batch.flip(-1))
    feats = np.zeros_like(cache.features)
    for b in run_backbone(backbone, list(cache.paths), np.flatnonzero(cache.ok)):
        feats[b.rows] = b.features
    folder.mkdir(parents=True, exist_ok=True)
    np.save(f, feats)
    return feats


if __name__ == "__main__":
    main()
