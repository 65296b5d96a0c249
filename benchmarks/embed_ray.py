"""Ray Data engine vs local engine: wall time of the same embed on the same images, one run.

Both engines embed a class-balanced subset into fresh caches; the script prints both wall times
(local: the better of a run before and a run after Ray; Ray: with and without starting the local
instance), their ratio, and the largest feature difference (must stay <= 1e-5). On one small
machine the Ray engine is not expected to win: it adds worker start-up and object-store copies;
it exists to spread the work over many machines.

    python benchmarks/embed_ray.py ../shared/data/cifar10-small/test --per-class 60
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from featpipe.backbones import resolve_spec
from featpipe.data import load_dataset
from featpipe.features.cache import FeatureCache
from featpipe.features.embed import embed_dataset


def subset(src: Path, per_class: int, dst: Path) -> Path:
    """Symlinks to the first ``per_class`` images of each class folder."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for img in sorted(cls.iterdir())[:per_class]:
            (dst / cls.name / img.name).symlink_to(img.resolve())
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="folder of class folders")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--actors", type=int, default=None)
    args = ap.parse_args()
    import ray

    spec = resolve_spec(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        folder = subset(args.data, args.per_class, Path(tmp) / "imgs")
        manifest = load_dataset(folder)
        print(f"{len(manifest)} images, {args.backbone}, {os.cpu_count()} CPUs")

        def run_local(k: int) -> tuple[float, object]:
            t = time.perf_counter()
            res = embed_dataset(manifest, spec, cache_dir=Path(tmp) / f"local{k}", progress=False)
            return time.perf_counter() - t, res

        t_local, local = run_local(0)  # local before and after Ray: load on a shared machine drifts

        t = time.perf_counter()
        ray.init(include_dashboard=False, logging_level=logging.ERROR)
        t_start = time.perf_counter() - t
        try:
            t = time.perf_counter()
            on_ray = embed_dataset(manifest, spec, cache_dir=Path(tmp) / "ray", progress=False,
                                   engine="ray", ray_actors=args.actors)
            t_ray = time.perf_counter() - t
        finally:
            ray.shutdown()
        t_local = min(t_local, run_local(1)[0])
        a, b = FeatureCache.open(local.path), FeatureCache.open(on_ray.path)
        diff = float(np.abs(a.features - b.features).max())
    print(f"local engine: {t_local:6.1f} s (best of a run before and after Ray)  ({len(manifest) / t_local:6.1f} img/s)")
    print(f"ray engine:   {t_ray:6.1f} s  ({len(manifest) / t_ray:6.1f} img/s), + {t_start:.1f} s Ray start-up")
    print(f"ray / local wall time: {t_ray / t_local:.2f} (with start-up {(t_ray + t_start) / t_local:.2f})")
    print(f"max |feature difference|: {diff:.2e}  same rows: {list(a.ids) == list(b.ids)}")


if __name__ == "__main__":
    main()
