"""Run a pipeline twice and compare: the unchanged re-run must cost a small fraction of the first run
and give the same leaderboard (up-to-date skipping). Prints both wall times, their ratio, and the
leaderboard (with fused rows beside single backbones).

Usage:
    python benchmarks/studies.py pipelines/cifar10-small.yaml [--out runs/bench-studies] [--set KEY=VALUE ...]

Each run is the `featpipe run` command in a fresh process (start-up included). --out is emptied first
unless --keep. Nothing here is run by the test suite.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(pipeline: str, out: Path, sets: list[str]) -> float:
    cmd = [sys.executable, "-c", "from featpipe.cli import main; main()", "run", pipeline, "-q", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def leaderboard(out: Path) -> list[dict[str, str]]:
    with open(out / "report" / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline")
    ap.add_argument("--out", default="runs/bench-studies")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--keep", action="store_true", help="keep --out (the first run may then reuse caches)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    first = run(args.pipeline, out, args.sets)
    board1 = leaderboard(out)
    second = run(args.pipeline, out, args.sets)
    board2 = leaderboard(out)
    print(f"first run {first:.1f} s, unchanged re-run {second:.1f} s: ratio {second / first:.3f}; "
          f"same leaderboard: {board1 == board2}")
    cols = [c for c in ("backbone", "head", "metric", "val", "test") if board2 and c in board2[0]]
    for row in board2:
        print("  " + "  ".join(f"{row.get(c, '')}" for c in cols))


if __name__ == "__main__":
    main()
