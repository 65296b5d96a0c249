"""Report on a large dataset: time and peak memory of `featpipe report` vs the size of the images.

Writes N small JPEGs (default 100,000 of 64x64) in class folders, embeds them with a tiny random-init
backbone through the real embed path, fits a logistic head, then builds the report in a fresh
process and measures its peak resident memory. The references, measured in the same run: a process
that imports the libraries a report uses and opens the same feature cache (the floor), and the
decoded size of all the images (what a report that loaded every image would need at least).
Thumbnails must stay bounded whatever N is.

    python benchmarks/report_scale.py --n 100000 --work /tmp/featpipe-scale
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# peak memory from VmHWM: ru_maxrss survives fork+exec on Linux and would report the parent's peak
CHILD = """
import json, re, sys, time
t = time.perf_counter()
from featpipe.features.cache import FeatureCache
if sys.argv[1] == "open":  # the floor: the libraries a report imports, and the cache's arrays
    import matplotlib, sklearn.decomposition, sklearn.linear_model, torch
    import featpipe.reporting
    c = FeatureCache.open(sys.argv[2]); n = len(c)
else:
    from featpipe.reporting import build_report
    build_report(caches=[sys.argv[2]], models_dir=sys.argv[3], out=sys.argv[4])
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": int(hwm.group(1)) / 1024}))
"""


def write_images(root: Path, n: int, classes: int, size: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    bases = rng.integers(30, 226, (classes, 3))
    for k in range(n):
        c = k % classes
        d = root / f"class{c:02d}"
        if k < classes:
            d.mkdir(parents=True, exist_ok=True)
        arr = np.clip(bases[c] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{k:06d}.jpg", quality=75)


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="working folder (kept; images are reused)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from featpipe.backbones import resolve_spec
    from featpipe.data import load_dataset
    from featpipe.features.cache import FeatureCache
    from featpipe.features.embed import embed_dataset
    from featpipe.reporting._common import GALLERY, THUMBS_PER_CLASS
    from featpipe.runs.fit import fit_cache, write_run

    work = args.work or Path(tempfile.mkdtemp(prefix="featpipe-scale-"))
    data = work / f"images-{args.n}-{args.size}"
    t = time.perf_counter()
    if not (data / ".done").exists():
        write_images(data, args.n, args.classes, args.size, args.seed)
        (data / ".done").write_text("ok")
    print(f"images: {args.n} x {args.size}px in {data} ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    res = embed_dataset(load_dataset(data), resolve_spec("test_efficientnet", pretrained=False, image_size=32),
                        cache_dir=work / "cache", progress=False, seed=args.seed, batch_size=256)
    print(f"embed: {res.n_computed} computed, {res.n_reused} reused ({time.perf_counter() - t:.0f} s) -> {res.path}")
    models = work / "models"
    t = time.perf_counter()
    for run in fit_cache(FeatureCache.open(res.path), "logistic", seed=args.seed):
        write_run(run, models)
    print(f"fit-head logistic: {time.perf_counter() - t:.0f} s")

    out = work / "report"
    floor = child("open", str(res.path))
    cold = child("report", str(res.path), str(models), str(out))
    warm = child("report", str(res.path), str(models), str(out))
    thumbs = len(list((out / "thumbs").glob("*.jpg")))
    decoded_mb = args.n * args.size * args.size * 3 / 2**20
    models_n = len(list(models.rglob("metrics.json")))
    bound = args.classes * THUMBS_PER_CLASS + models_n * 2 * GALLERY + 2 * 24 + 2 * 2 * 24
    print(f"\nreference: libraries + open the cache    peak {floor['peak_mb']:7.0f} MB  {floor['seconds']:6.1f} s")
    print(f"report, first build                      peak {cold['peak_mb']:7.0f} MB  {cold['seconds']:6.1f} s")
    print(f"report, rebuild (thumbs/plots reused)    peak {warm['peak_mb']:7.0f} MB  {warm['seconds']:6.1f} s")
    print(f"all {args.n} images decoded would be          {decoded_mb:7.0f} MB")
    print(f"report peak / floor peak: {cold['peak_mb'] / floor['peak_mb']:.2f}")
    print(f"report memory above the floor / decoded images: "
          f"{(cold['peak_mb'] - floor['peak_mb']) / decoded_mb:.3f}")
    print(f"thumbnails written: {thumbs} (bound {bound}, independent of N)")
    return 0 if thumbs <= bound else 1


if __name__ == "__main__":
    raise SystemExit(main())
