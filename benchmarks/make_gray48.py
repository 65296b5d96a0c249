"""Build a 48px grayscale 4-class image set (like a facial-expression study's data) from cifar10-small:
four classes converted to grayscale, upscaled 32 -> 48px (bicubic) and written as JPEG class folders
with the source's train/ and test/ split, for the fine-tune budget runs of issue 19.

Usage:
    python benchmarks/make_gray48.py [--src ../shared/data/cifar10-small] [--out runs/gray48]
        [--classes cat,deer,dog,horse] [--quality 90]

Then, e.g. (30-minute budget, the default recipe: scratch-cnn becomes grayscale-native by itself):
    featpipe finetune --data runs/gray48 --backbone scratch-cnn --budget 30m --out runs/gray48-scratch
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "cifar10-small"


def convert(src: Path, out: Path, classes: list[str], side: int = 48, quality: int = 90) -> dict[str, int]:
    """Write ``out/<split>/<class>/*.jpg`` (mode L, ``side`` px); returns images per split."""
    counts: dict[str, int] = {}
    for split in ("train", "test"):
        for cls in classes:
            files = sorted((src / split / cls).glob("*"))
            if not files:
                raise SystemExit(f"no images in {src / split / cls}")
            d = out / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in files:
                with Image.open(f) as im:
                    im.convert("L").resize((side, side), Image.Resampling.BICUBIC).save(
                        d / f"{f.stem}.jpg", quality=quality)
            counts[split] = counts.get(split, 0) + len(files)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(DEFAULT_SRC))
    ap.add_argument("--out", default="runs/gray48")
    ap.add_argument("--classes", default="cat,deer,dog,horse", help="four animal classes: the hard part of CIFAR")
    ap.add_argument("--side", type=int, default=48)
    ap.add_argument("--quality", type=int, default=90)
    a = ap.parse_args()
    counts = convert(Path(a.src), Path(a.out), a.classes.split(","), a.side, a.quality)
    print(f"{a.out}: {a.side}px grayscale JPEG, classes {a.classes}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
