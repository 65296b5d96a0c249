"""Benchmark featpipe's vectorised bootstrap interval against a loop of scikit-learn calls on resampled
rows (the reference), same resamples' count, same data, one run; prints the speed ratio and both
intervals. Nothing here is run by the test suite.

Usage:
    python benchmarks/bootstrap.py [--n 1000] [--classes 10] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    from featpipe.heads.metrics import bootstrap_ci, get_metric, sklearn_score

    rng = np.random.default_rng(0)
    C, n, B = args.classes, args.n, args.resamples
    y = rng.integers(0, C, n)
    P = rng.random((n, C)) + np.eye(C)[y] * 0.7
    P /= P.sum(1, keepdims=True)
    pred = P.argmax(1)
    for metric in ("accuracy", "macro_f1", "roc_auc"):
        t0 = time.perf_counter()
        ci = bootstrap_ci(metric, "multiclass", y, P, pred, n_resamples=B, seed=0)
        t_vec = time.perf_counter() - t0
        key = get_metric(metric, "multiclass").keys["multiclass"]
        t0 = time.perf_counter()
        vals = []
        for _ in range(B):
            i = rng.integers(0, n, n)
            vals.append(sklearn_score(key, "multiclass", y[i], P[i], pred[i]))
        t_ref = time.perf_counter() - t0
        ref = np.percentile(vals, [2.5, 97.5])
        print(f"{metric:10s} featpipe {t_vec:6.2f}s  sklearn loop {t_ref:6.2f}s  ratio x{t_ref / t_vec:5.1f}  "
              f"CI featpipe [{ci[0]:.4f}, {ci[1]:.4f}]  loop [{ref[0]:.4f}, {ref[1]:.4f}]")


if __name__ == "__main__":
    main()
