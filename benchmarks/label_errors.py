"""Does the report's label check find wrong labels, and only them? Precision and recall of its flags.

../shared/data/cifar10-small is embedded once with each ``--backbone`` (the three offline
EfficientNet-Lite nets by default; the caches are reused). Then, for the clean labels and for copies of
the caches with a seeded ``--rate`` of the labels flipped at random to another class (the same images
in every cache, every split), every head is fitted (``--heads``) on every cache and ``featpipe report``
is built on the caches and their runs: the report's own detector (confident learning on out-of-fold
probabilities of the best head on each backbone; a row is flagged when every check flags it) writes
``label_issues.csv``, whose paths are compared with the flipped rows. ``--finetune BUDGET`` adds a
cross-fitted fine-tune of the first backbone on the same labels (``featpipe finetune --cross-fit 2
--budget BUDGET``: two fine-tunes, each scoring the half it left out) as one more check. The clean run gives the count flagged on data with no planted error
beside it. ``--digits`` also runs the demo's data (scikit-learn's digits, written as images), clean:
the goal is fewer than 3% of its rows flagged.

Usage:
    python benchmarks/label_errors.py [--data ../shared/data/cifar10-small] [--backbone NAME ...]
        [--work runs/bench-label-errors] [--rate 0.05] [--seed 0] [--heads all] [--digits]
        [--cache CIFAR_CACHE.h5 ...] [--digits-cache DIGITS_CACHE.h5] [--finetune 12m [--cross-fit 2]]

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


def _noisy_copies(paths: list[Path], work: Path, rate: float, seed: int) -> np.ndarray:
    """Copies of the caches with ``rate`` of the first one's labelled rows given another class (uniform),
    the same images and the same new labels in every copy; returns the flipped rows of the first."""
    import h5py

    from featpipe.features.cache import FeatureCache

    k = len(FeatureCache.open(paths[0]).classes)
    new: dict[str, int] = {}
    for n, path in enumerate(paths):
        out = work / f"noisy-{n}-{path.name}"
        shutil.copy(path, out)
        with h5py.File(out, "r+") as f:
            y = f["labels"][...]
            names = np.asarray(f["paths"].asstr()[...])
            if n == 0:
                rows = np.flatnonzero(f["labeled"][...].astype(bool) & (f["status"][...] == 1))
                rng = np.random.default_rng(seed)
                flipped = np.sort(rng.choice(rows, int(round(rate * len(rows))), replace=False))
                new = dict(zip(names[flipped].tolist(), ((y[flipped] + rng.integers(1, k, len(flipped))) % k).tolist(),
                               strict=True))
            for i in np.flatnonzero(np.isin(names, list(new))):
                y[i] = new[names[i]]
            f["labels"][...] = y
    return flipped


def _cross_fit(cache_path: Path, out: Path, budget: str, folds: int, seed: int) -> None:
    """A cross-fitted fine-tune of the cache's backbone on the cache's images and labels (as stored)."""
    from featpipe.data import Manifest
    from featpipe.features.cache import FeatureCache
    from featpipe.finetune import FinetuneConfig, cross_fit

    c = FeatureCache.open(cache_path)
    m = Manifest(name=str(c.dataset.get("name")), source=str(c.dataset.get("source")), ids=[str(i) for i in c.ids],
                 paths=[str(p) for p in c.paths], splits=[str(s) for s in c.splits], labels=np.asarray(c.labels),
                 labeled=np.asarray(c.labeled, dtype=bool), task=c.task, classes=[str(k) for k in c.classes])
    t = time.perf_counter()
    rec = cross_fit(m, FinetuneConfig(backbone=str(c.backbone.get("name")), budget=budget, cross_fit=folds, seed=seed),
                    out, progress=False, log=lambda s: print("   ", s))
    print(f"  cross-fit {rec['backbone']}: out-of-fold accuracy {rec['oof_accuracy']:.4f} "
          f"({time.perf_counter() - t:.0f}s; 0s when reused)")


def _check(cache_paths: list[Path], work: Path, heads: str, seed: int,
           cross_fit: Path | None = None) -> tuple[list[dict[str, str]], dict]:
    """Fit every head on every cache, build the report (with the cross-fit folder ``cross_fit`` among the
    models), return its label_issues.csv rows and the label check's record."""
    import json

    from featpipe.features.cache import FeatureCache
    from featpipe.reporting import build_report
    from featpipe.runs.fit import fit_cache, write_run

    models = work / "models"
    shutil.rmtree(models, ignore_errors=True)
    t = time.perf_counter()
    for cache_path in cache_paths:
        cache = FeatureCache.open(cache_path)
        for run in fit_cache(cache, heads, seed=seed):
            write_run(run, models)
            print(f"  {str(cache.backbone.get('name')):18s} {run.head:9s} val {run.metrics['scores']['val']['main']:.4f} "
                  f"test {run.metrics['scores']['test']['main']:.4f}")
    if cross_fit is not None:
        shutil.copytree(cross_fit, models / "cross-fit")
    t1 = time.perf_counter()
    index = build_report(caches=list(cache_paths), models_dir=models, out=work / "report")
    print(f"  heads {t1 - t:.0f}s, report {time.perf_counter() - t1:.0f}s")
    with (index.parent / "label_issues.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    record = next(json.loads(p.read_text())["label_issues"] for p in (index.parent / ".analysis").glob("*.json"))
    return rows, record


def _describe(li: dict) -> str:
    checks = [c for c in li.get("checks") or [li.get("probe") or {}] if c.get("used", True)]
    s = "checked by " + " and ".join(
        f"{c.get('name') or c.get('head')} ({c.get('params')}"
        + (f", out-of-fold accuracy {c['oof_accuracy']:.4f}, alone {c['n_flagged']} flags" if "oof_accuracy" in c else "")
        + ")" for c in checks)
    if li.get("too_weak"):
        return s + f"; too weak: {li['too_weak']}"
    return s + f"; estimated {li.get('n_estimated') or 0:.0f} label issues"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--backbone", action="append", default=None,
                    help="repeat for several (default: efficientnet_lite0, _lite1 and _lite2)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-label-errors")
    ap.add_argument("--cache", type=Path, action="append", default=None,
                    help="an existing cache of --data (skips the embed); repeat for several backbones")
    ap.add_argument("--rate", type=float, default=0.05, help="share of labels flipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", default="all")
    ap.add_argument("--finetune", default=None, metavar="BUDGET",
                    help="also check with a cross-fitted fine-tune of the first backbone, e.g. 12m (shared by the folds)")
    ap.add_argument("--cross-fit", type=int, default=2, help="folds of the --finetune cross-fit")
    ap.add_argument("--digits", action="store_true", help="also check the demo's digits (clean): < 3%% flagged")
    ap.add_argument("--digits-cache", type=Path, default=None, help="an existing cache of the digits (skips the embed)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"dataset not found: {args.data}", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    backbones = args.backbone or ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    clean_paths = args.cache or [_embed(args.data, b, args.work / "cache", args.seed) for b in backbones]
    flipped = _noisy_copies(clean_paths, args.work, args.rate, args.seed)
    noisy_paths = [args.work / f"noisy-{n}-{p.name}" for n, p in enumerate(clean_paths)]

    from featpipe.features.cache import FeatureCache

    paths = np.asarray(FeatureCache.open(clean_paths[0]).paths).astype(str)
    n = int(len(paths))
    xf = {}
    if args.finetune:
        for name, path in (("clean", clean_paths[0]), ("noisy", noisy_paths[0])):
            print(f"\ncross-fitted fine-tune on the {name} labels ({args.cross_fit} folds, budget {args.finetune}):")
            xf[name] = args.work / f"cross-fit-{name}"
            _cross_fit(path, xf[name], args.finetune, args.cross_fit, args.seed)
    print(f"\nclean labels ({n} rows):")
    clean_rows, clean_li = _check(clean_paths, args.work / "clean", args.heads, args.seed, xf.get("clean"))
    print(f"\n{args.rate:.0%} of the labels flipped at random ({len(flipped)} rows, seed {args.seed}):")
    noisy_rows, noisy_li = _check(noisy_paths, args.work / "noisy", args.heads, args.seed, xf.get("noisy"))
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

        path = args.digits_cache or _embed(write_digits(args.work / "digits"), backbones[0], args.work / "cache",
                                           args.seed)
        print(f"\ndigits (the demo's data, {backbones[0]} as in the demo), clean labels:")
        rows, li = _check([path], args.work / "digits-check", args.heads, args.seed)
        m = len(FeatureCache.open(path).paths)
        print(f"digits: {len(rows)} of {m} rows flagged ({len(rows) / m:.1%}; goal < 3%); {_describe(li)}")
        ok = ok and len(rows) < 0.03 * m
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
