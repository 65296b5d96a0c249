"""Benchmark the heads on real feature caches: fit time and test score per head, and for multilabel
caches micro-F1 at threshold 0.5 vs the tuned global threshold vs tuned per-class thresholds.

Usage:
    python benchmarks/heads.py CACHE.h5 [CACHE.h5 ...] [--heads logistic,mlp,lgbm] [--out runs/bench-heads]
    python benchmarks/heads.py --embed [--backbone efficientnet_lite0]   # embed ../shared/data sets first

With --embed (or no cache given) the datasets under ../shared/data (relative to the repository) are
embedded with `featpipe embed` into --cache-dir first; missing datasets are skipped. Nothing here is
run by the test suite.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = {
    "cifar10-small": [],
    "photos-multilabel": ["--pattern", "im{id}.jpg"],
}


def embed_defaults(backbone: str, cache_dir: Path) -> list[Path]:
    """Embed every available shared dataset (resumable; a cache hit is instant) and return the caches."""
    out = []
    for name, extra in DEFAULT_DATA.items():
        data = SHARED / name
        if not data.exists():
            print(f"skip {name}: {data} not found", file=sys.stderr)
            continue
        before = set(cache_dir.glob("*.h5"))
        cmd = [sys.executable, "-c", "from featpipe.cli import main; main()", "embed", "--data", str(data), "--backbone", backbone,
               "--cache-dir", str(cache_dir), "--quiet", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"skip {name}: embed failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("cache: ")]
        new = Path(line[-1][len("cache: "):]) if line else next(iter(set(cache_dir.glob("*.h5")) - before), None)
        if new:
            out.append(new)
    return out


def micro_f1(Y: np.ndarray, pred: np.ndarray) -> float:
    tp = int((Y.astype(bool) & pred.astype(bool)).sum())
    fp = int((~Y.astype(bool) & pred.astype(bool)).sum())
    fn = int((Y.astype(bool) & ~pred.astype(bool)).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caches", nargs="*", type=Path, help="feature cache files (.h5)")
    ap.add_argument("--embed", action="store_true", help="embed the ../shared/data datasets first")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "cache")
    ap.add_argument("--heads", default="logistic,mlp,lgbm")
    ap.add_argument("--refit", default=None, choices=["train", "train+val"], help="default: fit-head's (train+val)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the fit-head artifacts here")
    args = ap.parse_args(argv)

    from featpipe.features.cache import FeatureCache
    from featpipe.heads.thresholds import apply_thresholds
    from featpipe.runs.fit import fit_cache, write_run

    caches = list(args.caches)
    if args.embed or not caches:
        caches += embed_defaults(args.backbone, args.cache_dir)
    if not caches:
        print("no caches to benchmark", file=sys.stderr)
        return 1
    rows = []
    for path in caches:
        cache = FeatureCache.open(path)
        te = cache.split_indices("test")
        print(f"\n{path.name}: {cache.task}, {len(cache.classes)} classes, dim {cache.feature_dim}, "
              f"train {len(cache.split_indices('train'))} / val {len(cache.split_indices('val'))} / test {len(te)}")
        for head in args.heads.split(","):
            t0 = time.perf_counter()
            (run,) = fit_cache(cache, head, seed=args.seed, **({"refit": args.refit} if args.refit else {}))
            secs = time.perf_counter() - t0
            if args.out:
                write_run(run, args.out)
            m = run.metrics
            test = m["scores"]["test"] or {}
            row = {"cache": path.stem[:40], "head": head, "fit_s": secs, "metric": m["metric"],
                   "val": m["scores"]["val"]["main"], "test": test.get("main"), "params": m["params"]}
            if cache.task == "multilabel" and len(te):
                P = run.model.predict_proba(cache.features[te].astype(np.float64))
                Y = cache.labels[te]
                row["f1@0.5"] = micro_f1(Y, apply_thresholds(P, "multilabel", 0.5))
                row["f1@global"] = micro_f1(Y, apply_thresholds(P, "multilabel", m["threshold"]["global"]))
                row["f1@per-class"] = micro_f1(Y, apply_thresholds(P, "multilabel", np.asarray(m["threshold"]["per_class"])))
            rows.append(row)
            extra = "".join(f"  {k} {row[k]:.4f}" for k in ("f1@0.5", "f1@global", "f1@per-class") if k in row)
            test_txt = "-" if row["test"] is None else f"{row['test']:.4f}"
            print(f"  {head:8s} fit {secs:7.1f}s  val {row['val']:.4f}  test {test_txt}  ({m['metric']}, refit "
                  f"{m['refit']}){extra}")
    base = {r["cache"]: r["fit_s"] for r in rows if r["head"] == "logistic"}
    if base:
        print("\nfit time relative to the logistic head on the same cache (measured in this run):")
        for r in rows:
            if r["cache"] in base:
                print(f"  {r['cache']:40s} {r['head']:8s} x{r['fit_s'] / max(base[r['cache']], 1e-9):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
