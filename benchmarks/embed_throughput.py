"""`featpipe embed` as a user sees it vs the best raw forward pass, measured in one run.

1. Builds a folder of >= --images JPEGs from a given image folder (originals, then mirrored and
   re-encoded copies, class folders kept) in a temp folder.
2. Raw forward: the bare model on pre-made tensors, best over batch {8,16,32,64} x memory format
   {channels_last, NCHW}, at the precision the cache records (measured before and after step 3;
   the better of the two is the reference, so drift on a shared machine counts against featpipe).
3. Runs the `featpipe embed` command on that folder (a fresh process: start-up, model load,
   hashing, decoding, HDF5 writes included) and times its wall clock.
4. Prints images/s of both and their ratio (goal >= 0.85), plus the peak RSS of the command on
   a tenth of the images vs on all of them (memory must not grow with the dataset).

Absolute numbers on a shared machine are noise; the ratio is measured in one run. The load
average is printed so a reader can judge.

    python benchmarks/embed_throughput.py ../shared/data/cifar10-small            # 10,000 JPEGs
    python benchmarks/embed_throughput.py ../shared/data/photos-multilabel/images --images 3000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
from PIL import Image, ImageOps

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def make_jpegs(src: Path, dst: Path, n: int) -> int:
    """Write >= ``n`` JPEGs under ``dst`` with ``src``'s folder layout: originals, then variants."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"no images under {src}")
    random.Random(0).shuffle(files)  # any prefix is a fair sample of every split and class
    variants = [
        ("", None),
        ("flip_", ImageOps.mirror),
        ("q85_", None),
        ("flipq85_", ImageOps.mirror),
        ("vflip_", ImageOps.flip),
    ]
    written = 0
    for prefix, op in itertools.cycle(variants):
        for f in files:
            out = dst / f.parent.relative_to(src) / f"{prefix}{written}_{f.stem}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            if not prefix and f.suffix.lower() in (".jpg", ".jpeg"):
                shutil.copyfile(f, out)
            else:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    (op(im) if op else im).save(out, quality=85 if "q85" in prefix else 92)
            written += 1
            if written >= n:
                return written
    return written


def raw_forward_rates(backbone, precision: str, n: int, batches: list[int]) -> dict[tuple[int, str], float]:
    """images/s of the bare model on a pre-made tensor per (batch, memory format)."""
    import torch

    model = backbone.model
    size = backbone.preprocessing["input_size"]
    rates = {}
    for bs, fmt_name in itertools.product(batches, ("channels_last", "NCHW")):
        fmt = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format
        model.to(memory_format=fmt)
        x = torch.randn(bs, *size).contiguous(memory_format=fmt)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            model(x)  # warm-up
            t, done = time.perf_counter(), 0
            while done < max(n, bs):
                model(x)
                done += bs
        rates[(bs, fmt_name)] = done / (time.perf_counter() - t)
    model.to(memory_format=torch.channels_last)
    return rates


def featpipe_command() -> list[str]:
    exe = Path(sys.executable).with_name("featpipe")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from featpipe.cli import main; main()"]


def run_embed(data: Path, cache_dir: Path, args: argparse.Namespace) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MiB) and output of one `featpipe embed` process."""
    cmd = [*featpipe_command(), "embed", "--data", str(data), "--cache-dir", str(cache_dir), "--quiet",
           "--backbone", args.backbone, "--precision", args.precision]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"featpipe embed failed:\n{text}")
    return wall, usage.ru_maxrss // 1024, text


def recorded_precision(cache_dir: Path) -> str:
    (path,) = cache_dir.glob("*.h5")
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["backbone"])["precision"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(SHARED / "cifar10-small"), help="folder of images to copy from")
    ap.add_argument("--images", type=int, default=10_000, help="JPEGs to embed (>= 10,000 for the goal)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--precision", default="auto", help="passed to featpipe embed; the raw forward uses "
                    "the precision the cache records")
    ap.add_argument("--batch-size", type=int, default=None, help="passed to featpipe embed (default: its own)")
    ap.add_argument("--workers", type=int, default=None, help="passed to featpipe embed (default: its own)")
    ap.add_argument("--raw-images", type=int, default=256, help="images per raw forward configuration")
    ap.add_argument("--raw-batches", default="8,16,32,64", help="batch sizes of the raw forward")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS run on a tenth of the images")
    args = ap.parse_args()
    src = Path(args.data)
    if not src.exists():
        raise SystemExit(f"image folder not found: {src}")

    from featpipe.backbones import load_backbone, resolve_spec

    batches = [int(b) for b in args.raw_batches.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="featpipe-bench-") as tmp:
        tmp = Path(tmp)
        n = make_jpegs(src, tmp / "images", args.images)
        small = tmp / "small"
        for f in sorted((tmp / "images").rglob("*.jpg"))[::10]:  # every 10th: all splits and classes
            (small / f.parent.relative_to(tmp / "images")).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, small / f.parent.relative_to(tmp / "images") / f.name)
        print(f"{n} JPEGs written from {src}", flush=True)

        spec = resolve_spec(args.backbone, precision=args.precision)  # what the command will resolve too
        backbone = load_backbone(spec)
        before = raw_forward_rates(backbone, spec.precision, args.raw_images, batches)
        rss_small = None
        if not args.no_memory:
            _, rss_small, _ = run_embed(small, tmp / "cache-small", args)
        wall, rss, out = run_embed(tmp / "images", tmp / "cache", args)
        precision = recorded_precision(tmp / "cache")
        if precision != spec.precision:
            raise SystemExit(f"the cache records precision {precision}, expected {spec.precision}")
        after = raw_forward_rates(backbone, precision, args.raw_images, batches)
    best = {k: max(before[k], after[k]) for k in before}
    (bs, fmt), raw = max(best.items(), key=lambda kv: kv[1])
    rate = n / wall
    print(f"\nbackbone {args.backbone}, precision {precision} (as the cache records), torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}")
    print("raw forward, bare model on pre-made tensors (img/s, best of two measurements):")
    for (b, f), r in sorted(best.items()):
        print(f"  batch {b:3d}  {f:14s} {r:7.1f}{'   <- best' if (b, f) == (bs, fmt) else ''}")
    line = next((ln for ln in out.splitlines() if ln.startswith("embedded")), "")
    print(f"featpipe embed command: {n} images in {wall:.1f} s wall (start-up included) = {rate:.1f} img/s "
          f"[its own line: {line.strip()}]")
    print(f"ratio featpipe embed / best raw forward = {rate:.1f} / {raw:.1f} = {rate / raw:.2f}  (goal >= 0.85)")
    if rss_small is not None:
        print(f"peak RSS of featpipe embed: {rss_small} MiB on {len(range(0, n, 10))} images, {rss} MiB on {n} "
              f"(x{rss / rss_small:.2f} for 10x the images)")
    print(f"load average at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
