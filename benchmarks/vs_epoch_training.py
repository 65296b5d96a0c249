"""featpipe (embed once + `fit-head --head all`) vs the studies' way, same backbone and data, one run.

The studies' way: a frozen backbone with a dense softmax head trained for --epochs epochs in plain
PyTorch, the backbone re-run on every training (and validation) image every epoch, decoding
included; the epoch with the best validation accuracy is kept, then scored once on test. Two forms:

- ``plain``: as the studies ran it, the timm model as timm builds it, fp32, default (NCHW) memory
  format, batch --batch-size: the issue's reference for the 8x goal;
- ``matched``: the same loop given featpipe's forward (its precision, channels_last, BatchNorms
  folded, conv + ReLU fused on CPU), so the ratio measures the structure alone (one pass + cheap
  heads vs one pass per epoch), not the forward's tuning.

featpipe's way: the `featpipe embed` and `featpipe fit-head --head all` commands (fresh processes,
start-up included); its test accuracy is that of the head with the best validation score. It runs
end to end twice, each in its own cache (--refits): with `--refit train`, and with fit-head's default
`--refit train+val`, which refits the chosen configuration on every labelled row.

All use the same images and the same split: a class-balanced subset of the given class-folder
dataset is the train folder, featpipe carves val out of it, and the test folder is (by default) all
of cifar10-small's 1,000 test images, so the accuracy comparison is not drowned in the +-0.07 noise
of a 140-image test split. Prints the wall times, the ratios (goal >= 8x), the test accuracies
(goal: featpipe's >= the studies') and a paired bootstrap 95% interval of their difference.

    python benchmarks/vs_epoch_training.py ../shared/data/cifar10-small/train --per-class 110
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_subset(src: Path, dst: Path, per_class: int) -> None:
    """Class folders with the first ``per_class`` images of each class of ``src``."""
    for cls in sorted(d for d in src.iterdir() if d.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copyfile(f, dst / cls.name / f.name)


def featpipe_command() -> list[str]:
    exe = Path(sys.executable).with_name("featpipe")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from featpipe.cli import main; main()"]


def featpipe_way(data: Path, work: Path, backbone: str, precision: str,
                 refit: str = "train") -> tuple[float, float, str, list[str], dict[str, bool]]:
    """Wall seconds of embed + fit-head --head all, the test accuracy of the val-best head, its name, a
    line per head and the val-best head's per-test-image correctness (by image id)."""
    t = time.perf_counter()
    for args in (["embed", "--data", str(data), "--backbone", backbone, "--precision", precision,
                  "--cache-dir", str(work / "cache"), "--quiet"],
                 ["fit-head", "--data", str(data), "--backbone", backbone, "--precision", precision,
                  "--cache-dir", str(work / "cache"), "--head", "all", "--refit", refit, "--out",
                  str(work / "models")]):
        r = subprocess.run([*featpipe_command(), *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"featpipe {args[0]} failed:\n{r.stdout}\n{r.stderr}")
    wall = time.perf_counter() - t
    runs = [json.loads(p.read_text()) for p in sorted((work / "models").glob("*/*/metrics.json"))]
    best = max(runs, key=lambda m: m["scores"]["val"]["accuracy"])
    lines = [f"{m['head']:9s} val {m['scores']['val']['accuracy']:.3f}  test {m['scores']['test']['accuracy']:.3f}  "
             f"fit {m['fit_seconds']:.1f} s" for m in runs]
    z = np.load(next((work / "models").glob(f"*/{best['head']}/predictions.npz")))
    test = z["split"] == "test"
    right = {str(i): bool(a == b) for i, a, b in zip(z["ids"][test], z["y_true"][test], z["pred"][test], strict=True)}
    return wall, best["scores"]["test"]["accuracy"], best["head"], lines, right


def paired_difference(a: dict[str, bool], b: dict[str, bool], seed: int, n: int = 2000) -> tuple[float, float, float]:
    """Accuracy of ``a`` minus ``b`` on the same test images, with featpipe's paired bootstrap 95% interval."""
    from featpipe.heads.metrics import paired_bootstrap

    keys = sorted(a)
    if sorted(b) != keys:
        raise SystemExit("the two ways scored different test images")

    def way(right: dict[str, bool]) -> tuple[np.ndarray, np.ndarray]:
        pred = np.array([right[k] for k in keys], dtype=int)
        return np.eye(2)[pred], pred

    # correctness as a binary task: every truth is 1 and a way predicts 1 where it was right
    d = paired_bootstrap("accuracy", "binary", np.ones(len(keys), dtype=int), way(a), way(b), n_resamples=n, seed=seed)
    return d["diff"], d["ci"][0], d["ci"][1]


def epoch_way(data: Path, backbone_name: str, precision: str, epochs: int, batch_size: int, seed: int,
              form: str) -> tuple[float, float, int, dict[str, bool]]:
    """Wall seconds, test accuracy, best epoch and per-test-image correctness (by image id) of the
    frozen backbone + dense head trained per epoch."""
    t = time.perf_counter()
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from featpipe.backbones import load_backbone, resolve_spec
    from featpipe.data import load_dataset

    torch.manual_seed(seed)
    manifest = load_dataset(data)
    plain = form == "plain"
    if plain:
        precision = "fp32"
    # plain: the network as timm builds it (trainable=True keeps its BatchNorms); matched: featpipe's
    backbone = load_backbone(resolve_spec(backbone_name, precision=precision), trainable=plain)
    model, transform = backbone.model, backbone._transform  # the model's own timm eval transform
    fmt = torch.contiguous_format if plain else torch.channels_last
    model.to(memory_format=fmt)
    labels = np.asarray(manifest.labels)
    splits = np.asarray(manifest.splits)

    class Images(Dataset):
        def __init__(self, split: str) -> None:
            self.rows = np.flatnonzero(splits == split)

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int):
            row = self.rows[i]
            with Image.open(manifest.paths[row]) as im:
                return transform(im.convert("RGB")), int(labels[row]), int(row)

    loaders = {s: DataLoader(Images(s), batch_size=batch_size, shuffle=(s == "train"), num_workers=0)
               for s in ("train", "val", "test")}
    head = nn.Linear(backbone.feature_dim, len(manifest.classes))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def features(x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return model(x.contiguous(memory_format=fmt)).float()

    def correct(split: str) -> dict[str, bool]:
        out = {}
        with torch.no_grad():
            for x, y, rows in loaders[split]:
                hit = (head(features(x)).argmax(1) == y).tolist()
                out.update({str(manifest.ids[r]): h for r, h in zip(rows.tolist(), hit, strict=True)})
        return out

    def accuracy(split: str) -> float:
        return float(np.mean(list(correct(split).values())))

    best_val, best_state, best_epoch = -1.0, None, 0
    for epoch in range(epochs):
        head.train()
        for x, y, _ in loaders["train"]:
            loss = nn.functional.cross_entropy(head(features(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        val = accuracy("val")
        if val > best_val:
            best_val, best_epoch = val, epoch + 1
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    right = correct("test")
    return time.perf_counter() - t, float(np.mean(list(right.values()))), best_epoch, right


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", default=str(SHARED / "cifar10-small" / "train"),
                    help="class-folder image dataset to take the subset from")
    ap.add_argument("--per-class", type=int, default=110, help="images per class (110 x 10 classes = 1,100)")
    ap.add_argument("--test-data", default=str(SHARED / "cifar10-small" / "test"),
                    help="class-folder dataset scored once at the end by both ways")
    ap.add_argument("--test-per-class", type=int, default=100, help="test images per class (100 x 10 = 1,000)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--precision", default="auto", help="both ways run at this precision (auto: featpipe's choice)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--forms", default="plain,matched", help="studies' way forms to run: plain, matched")
    ap.add_argument("--refits", default="train,train+val",
                    help="featpipe runs, each end to end in its own cache: fit-head --refit train and/or "
                         "train+val (the default: the chosen configuration refitted on every labelled row)")
    ap.add_argument("--epoch-way-on", default=None, help=argparse.SUPPRESS)  # internal: one fresh process
    ap.add_argument("--form", default="plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epoch_way_on:
        wall, test, best, right = epoch_way(Path(args.epoch_way_on), args.backbone, args.precision, args.epochs,
                                            args.batch_size, args.seed, args.form)
        print(json.dumps({"test": test, "best_epoch": best, "right": right}))
        return
    src, test_src = Path(args.data), Path(args.test_data)
    for d in (src, test_src):
        if not d.exists():
            raise SystemExit(f"dataset not found: {d}")
    from featpipe.backbones import resolve_spec

    precision = resolve_spec(args.backbone, precision=args.precision).precision
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="featpipe-vs-epochs-") as tmp:
        work = Path(tmp)
        data = work / "data"
        make_subset(src, data / "train", args.per_class)
        make_subset(test_src, data / "test", args.test_per_class)
        n = sum(1 for _ in (data / "train").rglob("*.*"))
        n_test = sum(1 for _ in (data / "test").rglob("*.*"))
        fp = {refit: featpipe_way(data, work / refit.replace("+", "_"), args.backbone, precision, refit)
              for refit in args.refits.split(",")}
        studies = {}
        for form in args.forms.split(","):
            # a fresh process, like the featpipe commands: start-up counts on both sides
            t = time.perf_counter()
            r = subprocess.run([sys.executable, __file__, "--epoch-way-on", str(data), "--backbone", args.backbone,
                                "--precision", precision, "--epochs", str(args.epochs), "--batch-size",
                                str(args.batch_size), "--seed", str(args.seed), "--form", form],
                               capture_output=True, text=True)
            wall = time.perf_counter() - t
            if r.returncode != 0:
                raise SystemExit(f"epoch training ({form}) failed:\n{r.stderr}")
            studies[form] = (wall, json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"\n{n} train+val images ({args.per_class} per class of {src}) and {n_test} test images ({test_src}), "
          f"backbone {args.backbone}, featpipe precision {precision}")
    for refit, (fp_wall, fp_test, fp_head, lines, _) in fp.items():
        print(f"featpipe heads, --refit {refit} (the val-best one is featpipe's answer):")
        for ln in lines:
            print("  " + ln)
        print(f"featpipe embed + fit-head --head all --refit {refit}: {fp_wall:7.1f} s   test accuracy {fp_test:.3f} "
              f"({fp_head})")
    for form, (wall, ep) in studies.items():
        how = ("fp32, NCHW, the model as timm builds it" if form == "plain" else
               f"{precision}, channels_last, folded BatchNorms and fused conv + ReLU: featpipe's forward")
        print(f"studies' way ({form}: {how}), {args.epochs} epochs re-running the backbone: {wall:7.1f} s   "
              f"test accuracy {ep['test']:.3f} (best val at epoch {ep['best_epoch']})")
        for refit, (fp_wall, _, _, _, fp_right) in fp.items():
            diff, lo, hi = paired_difference(fp_right, ep["right"], args.seed)
            print(f"  vs featpipe --refit {refit}: speed-up {wall / fp_wall:.1f}x (goal >= 8x against plain); "
                  f"accuracy featpipe - studies = {diff:+.3f}, paired bootstrap 95% interval {lo:+.3f} .. {hi:+.3f} "
                  f"over {n_test} test images (goal >= 0)")
    print(f"load average at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
