"""Does a bf16 forward change what the head learns? fp32 vs bf16 features, logistic head test score.

Embeds each dataset twice (``--precision fp32`` and ``bf16``), fits the logistic head on each cache
and prints the test score of both, the difference and the embedding speed ratio, all in one run.
This is the measurement behind ``--precision auto`` choosing bf16 on CPUs with native bf16.

    python benchmarks/precision_heads.py                       # both ../shared/data sets
    python benchmarks/precision_heads.py DATA [--pattern im{id}.jpg] [--limit 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from featpipe.backbones import resolve_spec
from featpipe.data import load_dataset
from featpipe.features.cache import FeatureCache
from featpipe.features.embed import embed_dataset
from featpipe.runs.fit import fit_cache

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULTS = [(SHARED / "cifar10-small", None), (SHARED / "photos-multilabel", "im{id}.jpg")]


def subset(manifest, limit: int, seed: int = 0):
    """A random subset of ``limit`` rows (all when ``limit`` is 0 or larger than the set)."""
    if not limit or limit >= len(manifest):
        return manifest
    from featpipe.data.manifest import Manifest

    keep = np.sort(np.random.default_rng(seed).permutation(len(manifest))[:limit])
    return Manifest(
        name=manifest.name, source=manifest.source + f"#subset{limit}", ids=[manifest.ids[i] for i in keep],
        paths=[manifest.paths[i] for i in keep], splits=[manifest.splits[i] for i in keep],
        labels=manifest.labels[keep], labeled=manifest.labeled[keep], task=manifest.task,
        classes=manifest.classes, split_seed=manifest.split_seed, array=manifest.array,
    )


def one_dataset(data: Path, pattern: str | None, limit: int, backbone: str, cache_dir: Path) -> dict:
    manifest = subset(load_dataset(str(data), **({"pattern": pattern} if pattern else {})), limit)
    out = {"name": manifest.name, "n": len(manifest), "task": manifest.task}
    for prec in ("fp32", "bf16"):
        spec = resolve_spec(backbone, precision=prec)
        t = time.perf_counter()
        res = embed_dataset(manifest, spec, cache_dir=cache_dir, progress=False)
        out[f"{prec}_rate"] = res.n_computed / (time.perf_counter() - t) if res.n_computed else float("nan")
        (run,) = fit_cache(FeatureCache.open(res.path), "logistic")
        test = run.metrics["scores"]["test"]
        out[f"{prec}_test"] = test["main"]
        out["metric"] = run.metrics["metric"]
        out["n_test"] = int(np.sum(np.asarray(manifest.splits) == "test"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=None)
    ap.add_argument("--pattern", default=None)
    ap.add_argument("--limit", type=int, default=0, help="random subset size per dataset (0 = all)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--cache-dir", default=None, help="keep the caches here (default: a temp folder)")
    args = ap.parse_args()
    sets = [(Path(args.data), args.pattern)] if args.data else [d for d in DEFAULTS if d[0].exists()]
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(args.cache_dir or tmp)
        for data, pattern in sets:
            r = one_dataset(data, pattern, args.limit, args.backbone, cache_dir)
            print(f"{r['name']}: {r['n']} images ({r['task']}), test set {r['n_test']}, logistic test {r['metric']}: "
                  f"fp32 {r['fp32_test']:.4f}  bf16 {r['bf16_test']:.4f}  "
                  f"bf16 - fp32 = {r['bf16_test'] - r['fp32_test']:+.4f};  embed img/s fp32 {r['fp32_rate']:.1f} "
                  f"bf16 {r['bf16_rate']:.1f} (x{r['bf16_rate'] / r['fp32_rate']:.2f})", flush=True)


if __name__ == "__main__":
    main()
