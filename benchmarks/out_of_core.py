"""Heads on caches larger than memory: peak memory of out-of-core fits as the cache grows 10x.

Writes two real feature caches (N and 10 x N rows of D-dim features with a 10-class structure), then
in fresh processes fits each head out of core (`--max-memory` far below the features' size) and, as
the reference measured in the same run, in memory on the small cache. Prints peak resident memory
(VmHWM) and the ratio large/small: bounded memory means a ratio near 1 while the data grew 10x.

    python benchmarks/out_of_core.py --n 20000 --dim 512 --heads logistic,lgbm,mlp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, re, sys, time
from featpipe.runs.fit import fit_cache, open_cache
t = time.perf_counter()
cache = open_cache(sys.argv[1], sys.argv[3])
(run,) = fit_cache(cache, sys.argv[2])
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": int(hwm.group(1)) / 1024,
                  "out_of_core": run.metrics["out_of_core"], "test": run.metrics["scores"]["test"]["main"]}))
"""


def write_cache(path: Path, n: int, dim: int, seed: int = 0, block: int = 20000) -> Path:
    """A real featpipe cache of ``n`` rows: 10 Gaussian classes in ``dim`` dims, split 70/15/15."""
    from featpipe.features.cache import OK, CacheWriter, create_cache_file

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (10, dim)).astype(np.float32)
    labels = (np.arange(n) % 10).astype(np.int64)
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.15, 0.15])
    attrs = {"format": "featpipe-features", "format_version": 1, "key": f"synthetic-{n}x{dim}",
             "config": {}, "backbone": {"name": "synthetic", "layer": None},
             "dataset": {"name": "synthetic", "source": "benchmark", "task": "multiclass"},
             "task": "multiclass", "classes": [f"c{k}" for k in range(10)], "seed": seed, "versions": {},
             "completed": True, "timings": {"embed_seconds_total": 0.0}}
    create_cache_file(path, n=n, dim=dim, feature_dtype="float32", ids=[f"r{i}" for i in range(n)],
                      paths=[f"synthetic#{i}" for i in range(n)], splits=list(splits), labels=labels,
                      labeled=np.ones(n, bool), attrs=attrs)
    w = CacheWriter(path)
    try:
        for lo in range(0, n, block):
            rows = np.arange(lo, min(n, lo + block))
            feats = centres[labels[rows]] + rng.normal(0, 4.0, (len(rows), dim)).astype(np.float32)
            w.write_rows(rows, feats, np.full(len(rows), OK, np.int8), [""] * len(rows),
                         np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64), [""] * len(rows))
    finally:
        w.close()
    return path


def child(path: Path, head: str, budget: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), head, budget], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="rows of the small cache (the large one has 10x)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", default="logistic,lgbm,mlp")
    ap.add_argument("--budget", default="1MB", help="--max-memory of the out-of-core fits (below both caches)")
    ap.add_argument("--work", default=None, help="folder for the caches (default: a temp folder)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="featpipe-ooc-"))
    work.mkdir(parents=True, exist_ok=True)
    small = write_cache(work / "small.h5", a.n, a.dim)
    large = write_cache(work / "large.h5", 10 * a.n, a.dim)
    mb = 4 * a.dim / 2**20
    print(f"features: {a.n} rows = {a.n * mb:.0f} MB, {10 * a.n} rows = {10 * a.n * mb:.0f} MB (float32 on disk)")
    print(f"{'head':<9} {'in memory, N':>14} {'out of core, N':>15} {'out of core, 10N':>17} {'ratio 10N/N':>12}"
          f" {'test acc (mem / ooc N / ooc 10N)':>34}")
    for head in a.heads.split(","):
        ref = child(small, head, "100GB")
        s = child(small, head, a.budget)
        big = child(large, head, a.budget)
        assert s["out_of_core"] and big["out_of_core"] and not ref["out_of_core"]
        print(f"{head:<9} {ref['peak_mb']:>11.0f} MB {s['peak_mb']:>12.0f} MB {big['peak_mb']:>14.0f} MB "
              f"{big['peak_mb'] / s['peak_mb']:>12.2f} {ref['test']:>12.3f} / {s['test']:.3f} / {big['test']:.3f}"
              f"   ({ref['seconds']:.0f} s / {s['seconds']:.0f} s / {big['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
