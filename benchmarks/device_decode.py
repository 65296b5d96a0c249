"""Where decoding runs (`featpipe embed --decode cpu|device|device-jpeg`): how close, how fast.

1. Closeness (always): the first --check images through each mode on --device; against ``cpu``
   (PIL decodes and resizes) it prints how many input pixels differ, the largest feature difference
   and the smallest cosine, and whether the failed rows agree. ``device`` should give 0 pixels
   everywhere; ``device-jpeg`` too on CPU (libjpeg-turbo), and on CUDA measures nvJPEG.
2. Rates (unless --no-timing), all in this one process on --device: the decoders alone (read, hash,
   decode, resize: every batch handed over and finished on the device) and the whole pass (decode +
   forward, no cache writes) per mode, against featpipe's forward on one pre-made uint8 batch. A GPU
   machine should reach >= 0.6 of that forward with ``device``.

    python benchmarks/device_decode.py ../shared/data/cifar10-small --device cuda --images 20000
    python benchmarks/device_decode.py IMAGES --check 200 --no-timing           # closeness only (CPU)
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODES = ("cpu", "device", "device-jpeg")


def inputs_and_features(backbone, paths, mode, batch_size):
    from featpipe.features.embed import _decoded_batches, _Decoder, _forward

    decoder = _Decoder([backbone], paths, None, mode)
    xs, feats, status = [], [], []
    for b in _decoded_batches(decoder, np.arange(len(paths)), batch_size, 0, "slices"):
        x = b.inputs[decoder.keys[0]]
        xs.append(x.cpu())
        feats.append(_forward(backbone, x, b.status == 1))
        status.append(b.status)
    return torch.cat(xs).numpy(), np.concatenate(feats), np.concatenate(status)


def closeness(backbone, paths, batch_size) -> None:
    ref = inputs_and_features(backbone, paths, "cpu", batch_size)
    for mode in MODES[1:]:
        x, f, s = inputs_and_features(backbone, paths, mode, batch_size)
        d = np.abs(x.astype(np.int16) - ref[0].astype(np.int16))
        ok = (s == 1) & (ref[2] == 1)
        f0, f1 = ref[1][ok], f[ok]
        cos = (f0 * f1).sum(1) / np.maximum(np.linalg.norm(f0, axis=1) * np.linalg.norm(f1, axis=1), 1e-30)
        print(f"  {mode:11s} vs cpu: failed rows agree {np.array_equal(s, ref[2])}; input pixels differing "
              f"{int((d > 0).sum()):,} of {d.size:,} (max {int(d.max())}); features: max |diff| "
              f"{np.abs(f0 - f1).max():.3g} (max |f| {np.abs(f0).max():.3g}), min cosine {cos.min():.6f}, "
              f"rows identical {int((f0 == f1).all(1).sum())}/{len(f0)}", flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rates(backbone, paths, mode, batch_size, workers) -> tuple[float, float]:
    """Images/s of the decoders alone and of decode + forward, for one mode."""
    from featpipe.features.embed import _decoded_batches, _Decoder, _forward, decode_mode

    decoder = _Decoder([backbone], paths, None, mode)
    rows = np.arange(len(paths))
    out = []
    for forward in (False, True):
        t = time.perf_counter()
        for b in _decoded_batches(decoder, rows, batch_size, workers, decode_mode(backbone.device)):
            if forward:
                _forward(backbone, b.inputs[decoder.keys[0]], b.status == 1)
        sync(backbone.device)
        out.append(len(rows) / (time.perf_counter() - t))
    return out[0], out[1]


def forward_rate(backbone, batch_size, n) -> float:
    h, w = backbone.preprocessing["input_size"][1:]
    x = torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8, device=backbone.device)
    for _ in range(3):
        backbone.forward(x)
    sync(backbone.device)
    t, done = time.perf_counter(), 0
    while done < n:
        backbone.forward(x)
        done += batch_size
    return done / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(SHARED / "cifar10-small"), help="folder of images")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--check", type=int, default=500, help="images for the closeness check")
    ap.add_argument("--images", type=int, default=20_000, help="images per rate measurement (files cycled)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()

    from featpipe.backbones import load_backbone, resolve_spec
    from featpipe.features.embed import _keep_freed_memory, default_batch_size, default_workers

    _keep_freed_memory()
    files = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise SystemExit(f"no images under {args.data}")
    spec = resolve_spec(args.backbone, precision=args.precision, device=args.device)
    backbone = load_backbone(spec, args.device)
    bs = args.batch_size or default_batch_size(args.device)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{spec.tag()} ({spec.precision}) on {args.device} ({name}), batch {bs}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    print(f"closeness on {min(args.check, len(files))} images of {args.data}:")
    closeness(backbone, files[:args.check], bs)
    if args.no_timing:
        return
    workers = default_workers(args.device) if args.workers is None else args.workers
    paths = list(itertools.islice(itertools.cycle(files), args.images))
    fwd = forward_rate(backbone, bs, min(args.images, 20 * bs))
    print(f"rates on {len(paths)} images ({workers} decoders); featpipe's forward on a pre-made uint8 batch: "
          f"{fwd:,.0f} img/s")
    for mode in MODES:
        dec, whole = rates(backbone, paths, mode, bs, workers)
        print(f"  {mode:11s} decoders alone {dec:8,.0f} img/s, decode + forward {whole:8,.0f} img/s "
              f"= {whole / fwd:.2f} of the forward", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
