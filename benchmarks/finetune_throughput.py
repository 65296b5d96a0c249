"""Fine-tune training loop vs the network's own train step, measured in one run on this machine.

For each case the same network, optimiser, loss, batch size and precision train (a) on pre-made
tensors (the network's own train-step throughput: the ceiling) and (b) through featpipe's training
loop on real image files (``_Run.train_epoch``: decode-once store + batched augmentation, or the
per-image PIL loader with ``--paths pil``). The ratio b/a is the bar (issue 19: >= 0.85 for
scratch-cnn at 48px and efficientnet_lite0 at 128px). Reference and loop are interleaved and the
best of ``--repeats`` is kept for each, because other load on a shared machine only slows things down.

Usage:
    python benchmarks/finetune_throughput.py [--cases scratch48,lite0-128] [--steps 12] [--repeats 2]
        [--paths fast,pil] [--threads N]

The per-image path is measured with one decode worker at torch's thread count and at one thread
fewer, the two ways a loader and torch's intra-op threads share the cores (the decode-once path has
no loader process: augmentation is torch ops in the training thread).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CASES = {
    # name: (backbone options, image side on disk, gray images)
    "scratch48": ({"backbone": "scratch-cnn"}, 48, True),
    "lite0-128": ({"backbone": "efficientnet_lite0", "image_size": 128}, 32, False),
}


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_images(root: Path, n: int, side: int, gray: bool, classes: int = 4) -> Path:
    """Class folders of JPEGs (noise around a class colour), like a small-image dataset on disk."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(40, 215, 3)
        for k in range(n // classes):
            arr = np.clip(base + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr).convert("L") if gray else Image.fromarray(arr)
            img.save(d / f"{k:05d}.jpg", quality=90)
    return root


def build_run(folder: Path, opts: dict, decode_once: bool, workers: int | None, pretrained: bool):
    from featpipe.data import load_dataset
    from featpipe.finetune import FinetuneConfig
    from featpipe.finetune._train import _Run

    m = load_dataset(folder, fractions=(0.9, 0.1, 0.0))
    cfg = FinetuneConfig(**opts, pretrained=pretrained, recipe="ft" if opts["backbone"] == "scratch-cnn" else None,
                         decode_once=decode_once, num_workers=workers, seed=0)
    run = _Run(m, cfg, Path(tempfile.mkdtemp()), lambda s: None, progress=False)
    run.build()
    run.failed = {}
    return run


def reference_rate(run, steps: int) -> float:
    """Images/s of the run's own net + optimiser + loss on pre-made channels_last tensors."""
    import torch
    from torch import nn

    from featpipe.backbones._torch import autocast
    from featpipe.finetune._net import set_train_mode

    c = run.cfg
    ch = 1 if run.store is not None and run.store.gray and c.in_channels == 1 else 3
    size = tuple(run.data_config["input_size"][1:])
    x = torch.randn(c.batch_size, ch, *size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(run.classes), (c.batch_size,))
    set_train_mode(run.net, run.prefixes, c.bn or "train")
    params = [p for g in run.opt.param_groups for p in g["params"]]
    t = 0.0
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with autocast(c.precision, run.device):
            logits = run.net(x)
        loss = run.criterion(logits.float(), y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, c.clip_grad or 1e9)
        run.opt.step()
        run.sched.step()
        if i >= 2:  # allocator and kernel warm-up excluded, as the loop's first epoch is
            t += time.perf_counter() - t0
    return steps * c.batch_size / t


def loop_rate(run, epoch: int) -> float:
    return float(run.train_epoch(epoch)["images_per_second"])


def measure(name: str, folder: Path, opts: dict, path: str, threads: int, workers: int | None, steps: int,
            repeats: int, pretrained: bool) -> tuple[float, float]:
    import torch

    torch.set_num_threads(threads)
    run = build_run(folder, opts, decode_once=path == "fast", workers=workers, pretrained=pretrained)
    assert (run.store is not None) == (path == "fast"), "the decode-once path did not engage"
    loop_rate(run, 1)  # warm-up epoch (worker start, allocator)
    ref, got = [], []
    for r in range(repeats):
        ref.append(reference_rate(run, steps))
        got.append(loop_rate(run, 2 + r))
    return max(ref), max(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--steps", type=int, default=12, help="training steps per measurement")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--paths", default="fast", help="fast (decode once), pil (per-image loader), or both")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-pretrained", action="store_true", help="random init (same speed, no weights needed)")
    a = ap.parse_args()
    import torch

    from featpipe.finetune import FinetuneConfig
    from featpipe.hardware import available_cpus

    threads = a.threads or torch.get_num_threads()
    print(f"start {time.strftime('%H:%M:%S')} {load()}, {available_cpus()} usable cores, torch threads {threads}",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ft-throughput-"))
    results = []
    for name in filter(None, a.cases.split(",")):
        opts, side, gray = CASES[name]
        bs = FinetuneConfig(**opts).resolved(native_size=side).batch_size
        # (steps + a warm-up epoch) x batch images for train, a tenth more for validation
        n = int((a.steps + 1) * bs / 0.9) + 8
        folder = make_images(tmp / name, n, side, gray)
        for path in filter(None, a.paths.split(",")):
            configs = [(threads, None)] if path == "fast" else [(threads, 1), (max(1, threads - 1), 1)]
            for th, workers in configs:
                ref, got = measure(name, folder, opts, path, th, workers, a.steps, a.repeats, not a.no_pretrained)
                ratio = got / ref
                results.append((name, path, th, workers, ref, got, ratio))
                how = "decode once" if path == "fast" else f"per image, {workers} worker"
                print(f"{name:10s} batch {bs:3d}  {how:22s} torch threads {th}: train step on tensors "
                      f"{ref:7.1f} img/s, training loop {got:7.1f} img/s, ratio {ratio:.3f} "
                      f"(bar 0.85: {'PASS' if ratio >= 0.85 else 'FAIL'})  [{load()}]", flush=True)
    print(f"end {time.strftime('%H:%M:%S')} {load()}")


if __name__ == "__main__":
    main()
