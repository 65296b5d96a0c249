"""`featpipe embed` as a user sees it vs the best raw forward pass, measured in one run.

1. Builds a folder of >= --images JPEGs from a given image folder (originals, then mirrored and
   re-encoded copies, class folders kept) in a temp folder.
2. Raw forward: a bare model on pre-made tensors, best over batch {8,16,32,64} x memory format
   {channels_last, NCHW} (GPU: batch {64,...,512}), at the precision the cache records, with the
   allocator setting featpipe uses (without it a CPU forward page-faults its activations and runs
   up to 1.7x slower, which would flatter featpipe). Two models:
   - ``timm``: the model as timm builds it, what a hand-written loop runs (the issue's reference);
   - ``featpipe``: the model as featpipe runs it (BatchNorms folded; on CPU each conv + ReLU/ReLU6
     one oneDNN convolution), so the ratio against it is the share of the compute limit the whole
     command reaches.
3. Rounds (--rounds): raw forward of each model's best configuration, then the `featpipe embed`
   command on the folder (a fresh process: start-up, model load, hashing, decoding, HDF5 writes
   included), then the raw forward again. Each round's ratio divides by the better of the raw rates
   around it, so a machine that speeds up or slows down between measurements counts against
   featpipe, and the spread between rounds shows how much the machine moved.
4. Peak RSS of the command on a tenth of the images vs on all of them (memory must not grow).

    python benchmarks/embed_throughput.py ../shared/data/cifar10-small            # 10,000 JPEGs
    python benchmarks/embed_throughput.py ../shared/data/photos-multilabel/images --images 3000
    python benchmarks/embed_throughput.py IMAGES --device cuda                    # a GPU machine
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
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


def raw_rate(model, shape, precision: str, device: str, bs: int, fmt_name: str, n: int) -> float:
    """images/s of ``model`` on one pre-made (bs, *shape) tensor, after a warm-up."""
    import torch

    from featpipe.backbones._torch import autocast

    fmt = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format
    model.to(memory_format=fmt)
    x = torch.randn(bs, *shape, device=device).contiguous(memory_format=fmt)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode(), autocast(precision, device):
        for _ in range(3 if device.startswith("cuda") else 1):
            model(x)  # warm-up
        sync()
        t, done = time.perf_counter(), 0
        while done < max(n, bs):
            model(x)
            done += bs
        sync()
    return done / (time.perf_counter() - t)


def sweep(model, shape, precision: str, device: str, batches: list[int], n: int) -> dict[tuple[int, str], float]:
    return {(bs, f): raw_rate(model, shape, precision, device, bs, f, n)
            for bs, f in itertools.product(batches, ("channels_last", "NCHW"))}


def featpipe_command() -> list[str]:
    exe = Path(sys.executable).with_name("featpipe")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from featpipe.cli import main; main()"]


def run_embed(data: Path, cache_dir: Path, args: argparse.Namespace) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MiB) and output of one `featpipe embed` process."""
    cmd = [*featpipe_command(), "embed", "--data", str(data), "--cache-dir", str(cache_dir), "--quiet",
           "--backbone", args.backbone, "--precision", args.precision, "--device", args.device]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.decode:
        cmd += ["--decode", args.decode]
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
    ap.add_argument("--device", default="cpu", help="passed to featpipe embed; the raw forward runs there too")
    ap.add_argument("--batch-size", type=int, default=None, help="passed to featpipe embed (default: its own)")
    ap.add_argument("--workers", type=int, default=None, help="passed to featpipe embed (default: its own)")
    ap.add_argument("--decode", default=None, help="passed to featpipe embed (default: its own, auto)")
    ap.add_argument("--rounds", type=int, default=2, help="raw / command / raw rounds")
    ap.add_argument("--raw-images", type=int, default=512, help="images per raw forward measurement")
    ap.add_argument("--raw-batches", default=None, help="batch sizes of the raw forward (default: 8,16,32,64 "
                    "on CPU, 64,128,256,512 on GPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS run on a tenth of the images")
    args = ap.parse_args()
    src = Path(args.data)
    if not src.exists():
        raise SystemExit(f"image folder not found: {src}")

    from featpipe.backbones import load_backbone, resolve_spec
    from featpipe.features.embed import _keep_freed_memory

    _keep_freed_memory()  # the allocator setting the command uses: without it the raw forward page-faults

    gpu = args.device.startswith("cuda")
    batches = [int(b) for b in (args.raw_batches or ("64,128,256,512" if gpu else "8,16,32,64")).split(",")]
    from featpipe.hardware import describe_line

    print(describe_line(), flush=True)  # figures from machines of other kinds are not comparable
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="featpipe-bench-") as tmp:
        tmp = Path(tmp)
        n = make_jpegs(src, tmp / "images", args.images)
        small = tmp / "small"
        for f in sorted((tmp / "images").rglob("*.jpg"))[::10]:  # every 10th: all splits and classes
            (small / f.parent.relative_to(tmp / "images")).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, small / f.parent.relative_to(tmp / "images") / f.name)
        print(f"{n} JPEGs written from {src}", flush=True)

        spec = resolve_spec(args.backbone, precision=args.precision, device=args.device)  # as the command will
        shape = tuple(load_backbone(spec, args.device).preprocessing["input_size"])
        models = {"timm": load_backbone(spec, args.device, trainable=True).model,  # as timm builds it
                  "featpipe": load_backbone(spec, args.device).model}  # folded and fused, as featpipe runs it
        sweeps = {name: sweep(m, shape, spec.precision, args.device, batches, args.raw_images)
                  for name, m in models.items()}
        best = {name: max(r, key=r.get) for name, r in sweeps.items()}
        for name, rates in sweeps.items():
            print(f"raw forward, {name} model (img/s):")
            for (b, f), r in sorted(rates.items()):
                print(f"  batch {b:3d}  {f:14s} {r:7.1f}{'   <- best' if (b, f) == best[name] else ''}")
        rss_small = None
        if not args.no_memory:
            _, rss_small, _ = run_embed(small, tmp / "cache-small", args)

        def raw_now() -> dict[str, float]:
            return {name: raw_rate(models[name], shape, spec.precision, args.device, *best[name], args.raw_images)
                    for name in models}

        rounds = []
        for k in range(args.rounds):
            before = raw_now()
            shutil.rmtree(tmp / "cache", ignore_errors=True)
            wall, rss, out = run_embed(tmp / "images", tmp / "cache", args)
            after = raw_now()
            precision = recorded_precision(tmp / "cache")
            if precision != spec.precision:
                raise SystemExit(f"the cache records precision {precision}, expected {spec.precision}")
            line = next((ln for ln in out.splitlines() if ln.startswith("embedded")), "").strip()
            rounds.append((before, after, n / wall, wall, line))
            print(f"round {k + 1}: raw timm {before['timm']:.0f} -> {after['timm']:.0f}, featpipe's model "
                  f"{before['featpipe']:.0f} -> {after['featpipe']:.0f}; featpipe embed {n} images in {wall:.1f} s "
                  f"= {n / wall:.1f} img/s [{line}]", flush=True)
    print(f"\nbackbone {args.backbone}, precision {precision} (as the cache records), device {args.device}")
    for name, label in (("timm", "the model as timm builds it (the issue's reference)"),
                        ("featpipe", "the model featpipe runs (the compute limit)")):
        ratios = [rate / max(b[name], a[name]) for b, a, rate, _, _ in rounds]
        print(f"ratio featpipe embed / best raw forward of {label}: "
              + ", ".join(f"{r:.2f}" for r in ratios) + f"  (median {statistics.median(ratios):.2f}; goal >= 0.85)")
    if rss_small is not None:
        print(f"peak RSS of featpipe embed: {rss_small} MiB on {len(range(0, n, 10))} images, {rss} MiB on {n} "
              f"(x{rss / rss_small:.2f} for 10x the images)")
    print(f"load average at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
