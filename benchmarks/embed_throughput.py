"""Full embed path (decode, resize, forward, HDF5 write) vs raw forward on pre-made tensors.

Both are measured in the same run on the same backbone, batch size and precision, and the
script prints their ratio (1.0 = the pipeline costs nothing beyond the forward pass). A second
table compares forward configurations (batch size, memory format, precision) so the defaults
can be checked against the best one on this machine.

    python benchmarks/embed_throughput.py ../shared/data/cifar10-small --limit 2000
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from featpipe.backbones import load_backbone, resolve_spec
from featpipe.data import load_dataset
from featpipe.embed import default_batch_size, embed_dataset


def raw_forward_rate(backbone, n: int, batch_size: int) -> float:
    size = backbone.preprocessing["input_size"]
    x = torch.randn(batch_size, *size)
    backbone.forward(x)  # warm-up
    t = time.perf_counter()
    done = 0
    while done < n:
        backbone.forward(x)
        done += batch_size
    return done / (time.perf_counter() - t)


def forward_configs(arch_spec, n: int) -> None:
    """images/s of the bare model under several configurations (channels_last vs NCHW, batch, bf16)."""
    backbone = load_backbone(arch_spec)
    model = backbone.model
    size = backbone.preprocessing["input_size"]
    print("\nforward configurations (bare model, pre-made tensors):")
    for bs, cl, bf16 in [(64, False, False), (16, True, False), (8, True, False), (8, False, False),
                         (8, True, True), (4, True, False)]:
        fmt = torch.channels_last if cl else torch.contiguous_format
        model.to(memory_format=fmt)
        x = torch.randn(bs, *size).contiguous(memory_format=fmt)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            model(x)
            t, done = time.perf_counter(), 0
            while done < n:
                model(x)
                done += bs
        rate = done / (time.perf_counter() - t)
        print(f"  batch {bs:3d}  {'channels_last' if cl else 'NCHW         '}  {'bf16' if bf16 else 'fp32'}  "
              f"{rate:7.1f} img/s")
    model.to(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-small"))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--limit", type=int, default=2000, help="images to embed (a class-balanced prefix)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--configs", action="store_true", help="also compare forward configurations")
    args = ap.parse_args()

    if not Path(args.data).exists():
        raise SystemExit(f"dataset not found: {args.data} (pass a folder of images)")
    manifest = load_dataset(args.data)
    if args.limit and args.limit < len(manifest):
        keep = np.random.default_rng(0).permutation(len(manifest))[: args.limit]
        keep.sort()
        manifest = _subset(manifest, keep)
    spec = resolve_spec(args.backbone, precision=args.precision)
    bs = args.batch_size or default_batch_size("cpu")
    torch.set_num_threads(torch.get_num_threads())

    backbone = load_backbone(spec)
    n_raw = min(len(manifest), 512)
    raw_before = raw_forward_rate(backbone, n_raw, bs)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = embed_dataset(manifest, spec, cache_dir=tmp, batch_size=bs, num_workers=args.workers,
                            progress=False)
        wall = time.perf_counter() - t
    pipeline_rate = res.n_computed / res.seconds
    raw_after = raw_forward_rate(backbone, n_raw, bs)
    # shared machines drift: the reference is the mean of a measurement before and after
    raw_rate = (raw_before + raw_after) / 2
    print(f"dataset {manifest.name}: {len(manifest)} images; backbone {spec.tag()}; batch {bs}; "
          f"threads {torch.get_num_threads()}")
    print(f"full embed path : {pipeline_rate:7.1f} img/s  ({res.n_computed} images, {wall:.1f} s incl. model load)")
    print(f"raw forward     : {raw_rate:7.1f} img/s  (pre-made tensors, same backbone/batch/precision; "
          f"{raw_before:.1f} before, {raw_after:.1f} after)")
    print(f"ratio pipeline/raw = {pipeline_rate / raw_rate:.2f}")
    if args.configs:
        forward_configs(resolve_spec(args.backbone), 256)


def _subset(manifest, keep):
    from featpipe.data.manifest import Manifest

    return Manifest(
        name=manifest.name, source=manifest.source + f"#subset{len(keep)}",
        ids=[manifest.ids[i] for i in keep], paths=[manifest.paths[i] for i in keep],
        splits=[manifest.splits[i] for i in keep], labels=manifest.labels[keep],
        labeled=manifest.labeled[keep], task=manifest.task, classes=manifest.classes,
        split_seed=manifest.split_seed, array=manifest.array,
    )


if __name__ == "__main__":
    main()
