"""Does the report's label check find wrong labels, and only them? Precision and recall of its flags.

../shared/data/cifar10-small is embedded once (efficientnet_lite0 by default; the cache is reused).
Then, for the clean labels and for a copy of the cache with a seeded ``--rate`` of the labels flipped
at random to another class (every split), every head is fitted (``--heads``) and ``featpipe report``
is built on the cache and its runs: the report's own detector (confident learning on out-of-fold
probabilities of the best head on the leaderboard) writes ``label_issues.csv``, whose paths are
compared with the flipped rows. The clean run gives the count flagged on data with no planted error
beside it. ``--digits`` also runs the demo's data (scikit-learn's digits, written as images), clean:
the goal is fewer than 3% of its rows flagged.

Usage:
    python benchmarks/label_errors.py [--data ../shared/data/cifar10-small] [--backbone efficientnet_lite0]
        [--work runs/bench-label-errors] [--rate 0.05] [--seed 0] [--heads all] [--digits]
        [--cache CIFAR_CACHE.h5] [--digits-cache DIGITS_CACHE.h5]

Goal: precision >= 0.6 and recall >= 0.6 at 5% noise; scores are deterministic (seeded flips, split,
heads and folds); timings on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "cifar10-small"


def _embed(data: Path, backbone: str, cache_dir: Path, seed: int) -> Path:
    from featpipe.backbones import resolve_spec
    from featpipe.data import load_dataset
    from featpipe.features.embed import embed_dataset, resolve_device

    manifest = load_dataset(data, seed=seed)
    print(f"dataset {data}: {len(manifest)} images, {manifest.split_counts()}; {manifest.split_summary()}")
    t = time.perf_counter()
    res = embed_dataset(manifest, resolve_spec(backbone, device=resolve_device("auto")), cache_dir=cache_dir,
                        progress=True, seed=seed)
    print(f"embed {backbone}: computed {res.n_computed}, reused {res.n_reused}, failed {res.n_failed} in "
          f"{time.perf_counter() - t:.0f}s")
    return Path(res.path)


def _noisy_copy(path: Path, out: Path, rate: float, seed: int) -> np.ndarray:
    """A copy of the cache with ``rate`` of its labelled rows given another class (uniform); returns them."""
    import h5py

    from featpipe.features.cache import FeatureCache

    k = len(FeatureCache.open(path).classes)
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        y = f["labels"][...]
        rows = np.flatnonzero(f["labeled"][...].astype(bool) & (f["status"][...] == 1))
        rng = np.random.default_rng(seed)
        flipped = np.sort(rng.choice(rows, int(round(rate * len(rows))), replace=False))
        y[flipped] = (y[flipped] + rng.integers(1, k, len(flipped))) % k
        f["labels"][...] = y
    return flipped


def _check(cache_path: Path, work: Path, heads: str, seed: int) -> tuple[list[dict[str, str]], dict]:
    """Fit every head, build the report, return its label_issues.csv rows and the label check's record."""
    import json

    from featpipe.features.cache import FeatureCache
    from featpipe.reporting import build_report
    from featpipe.runs.fit import fit_cache, write_run

    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    cache = FeatureCache.open(cache_path)
    t = time.perf_counter()
    for run in fit_cache(cache, heads, seed=seed):
        write_run(run, models)
        print(f"  {run.head:9s} val {run.metrics['scores']['val']['main']:.4f} "
              f"test {run.metrics['scores']['test']['main']:.4f}")
    t1 = time.perf_counter()
    index = build_report(caches=[cache_path], models_dir=models, out=work / "report")
    print(f"  heads {t1 - t:.0f}s, report {time.perf_counter() - t1:.0f}s")
    with (index.parent / "label_issues.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    record = next(json.loads(p.read_text())["label_issues"] for p in (index.parent / ".analysis").glob("*.json"))
    return rows, record


def _describe(li: dict) -> str:
    probe = li.get("probe") or {}
    acc = li.get("oof_accuracy")
    s = f"checked by {probe.get('head')} ({probe.get('params')}), out-of-fold accuracy {acc:.4f}" if acc else ""
    if li.get("too_weak"):
        return s + f"; too weak: {li['too_weak']}"
    return s + f"; estimated {li.get('n_estimated') or 0:.0f} label issues"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-label-errors")
    ap.add_argument("--cache", type=Path, default=None, help="an existing cache of --data (skips the embed)")
    ap.add_argument("--rate", type=float, default=0.05, help="share of labels flipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", default="all")
    ap.add_argument("--digits", action="store_true", help="also check the demo's digits (clean): < 3%% flagged")
    ap.add_argument("--digits-cache", type=Path, default=None, help="an existing cache of the digits (skips the embed)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"dataset not found: {args.data}", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    clean_path = args.cache or _embed(args.data, args.backbone, args.work / "cache", args.seed)
    noisy_path = args.work / "noisy.h5"
    flipped = _noisy_copy(clean_path, noisy_path, args.rate, args.seed)

    from featpipe.features.cache import FeatureCache

    paths = np.asarray(FeatureCache.open(clean_path).paths).astype(str)
    n = int(len(paths))
    print(f"\nclean labels ({n} rows):")
    clean_rows, clean_li = _check(clean_path, args.work / "clean", args.heads, args.seed)
    print(f"\n{args.rate:.0%} of the labels flipped at random ({len(flipped)} rows, seed {args.seed}):")
    noisy_rows, noisy_li = _check(noisy_path, args.work / "noisy", args.heads, args.seed)
    truth = set(paths[flipped].tolist())
    found = {r["path"] for r in noisy_rows}
    hits = len(found & truth)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(truth)
    print(f"\nclean:  {len(clean_rows)} flagged ({len(clean_rows) / n:.1%}); {_describe(clean_li)}")
    print(f"noisy:  {len(found)} flagged, {hits} of them flipped; {_describe(noisy_li)}")
    print(f"precision {precision:.3f}, recall {recall:.3f} against the {len(truth)} flipped rows "
          f"(goal: both >= 0.6) -> {'PASS' if precision >= 0.6 and recall >= 0.6 else 'FAIL'}")
    if noisy_li.get("withheld"):  # judged too weak: what it would have flagged
        w = {str(p) for p in paths[noisy_li["withheld"]["rows"]]}
        h = len(w & truth)
        print(f"withheld by the too-weak verdict: {len(w)} flags, precision {h / max(len(w), 1):.3f}, "
              f"recall {h / len(truth):.3f}, estimate {noisy_li['withheld']['n_estimated']:.0f}")
    ok = precision >= 0.6 and recall >= 0.6
    if args.digits:
        from featpipe.data.samples import write_digits

        path = args.digits_cache or _embed(write_digits(args.work / "digits"), args.backbone, args.work / "cache",
                                           args.seed)
        print("\ndigits (the demo's data), clean labels:")
        rows, li = _check(path, args.work / "digits-check", args.heads, args.seed)
        m = len(FeatureCache.open(path).paths)
        print(f"digits: {len(rows)} of {m} rows flagged ({len(rows) / m:.1%}; goal < 3%); {_describe(li)}")
        ok = ok and len(rows) < 0.03 * m
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
