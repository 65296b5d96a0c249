"""Analyses on cached features: suspected label errors, near-duplicates across splits."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

MAX_CV_ROWS = 20_000
SPLIT_PAIRS = (("train", "test"), ("train", "val"), ("val", "test"))


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


# ------------------------------------------------------------------------------------- label errors


def _oof_proba(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int, folds: int) -> np.ndarray:
    """Out-of-fold class probabilities of a multinomial logistic regression (classes absent from a
    training fold get probability 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from featpipe.heads import one_blas_thread

    out = np.zeros((len(y), n_classes))
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with one_blas_thread():  # L-BFGS, as in the logistic head
        for tr, te in skf.split(X, y):
            clf = LogisticRegression(C=1.0, max_iter=300)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X[tr], y[tr])
            out[np.ix_(te, clf.classes_)] = clf.predict_proba(X[te])
    return out


def _prepare_features(X: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(X.astype(np.float64))
    k = min(128, X.shape[1], len(X) - 1)
    if X.shape[1] > 256 and k >= 2:  # unsupervised, so no label leaks across folds; ~10x faster CV
        X = PCA(n_components=k, random_state=seed).fit_transform(X)
    return X


def label_issues(
    cache: Any, *, folds: int = 5, max_rows: int = MAX_CV_ROWS, seed: int = 0, top: int = 24
) -> dict[str, Any]:
    """Suspected label errors ranked by self-confidence (the out-of-fold probability of the given label).

    Out-of-fold probabilities come from ``folds``-fold cross-validated logistic regression on the cached
    features of every labelled, embedded row (at most ``max_rows``, a seeded subsample). As in confident
    learning, a row is flagged when another class k is confidently predicted - its out-of-fold probability
    reaches k's threshold (the mean probability of k over the rows labelled k, capped at 0.5) - and
    exceeds the given label's probability. ``cv_accuracy`` says how strong the probe is: with a weak
    probe many flags are ordinary mistakes. Multilabel: each (row, label) is a binary problem, flagged
    when the given 0/1 value gets an out-of-fold probability below 0.5.
    """
    rows = np.flatnonzero(cache.ok & cache.labeled)
    info: dict[str, Any] = {
        "n_labeled": int(len(rows)),
        "folds": folds,
        "issues": [],
        "n_flagged": 0,
        "subsampled": False,
        "skipped": None,
    }
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
        info["subsampled"] = True
    info["n_used"] = int(len(rows))
    C = len(cache.classes)
    Y = np.asarray(cache.labels)[rows]
    if len(rows) < 2 * folds:
        info["skipped"] = f"too few labelled rows ({len(rows)}) for {folds}-fold cross-validation"
        return info
    X = _prepare_features(np.asarray(cache.features)[rows], seed)
    issues: list[dict[str, Any]] = []
    if cache.task == "multilabel":
        Y = Y.astype(int)
        acc: list[float] = []
        for c in range(C):
            pos = int(Y[:, c].sum())
            k = min(folds, pos, len(Y) - pos)
            if k < 2:
                continue
            p = _oof_proba(X, Y[:, c], 2, seed, k)[:, 1]
            acc.append(float(((p >= 0.5) == Y[:, c]).mean()))
            given = np.where(Y[:, c] == 1, p, 1 - p)
            bad = np.flatnonzero(given < 0.5)  # the other value is then confident (>= 0.5) and higher
            for i in bad:
                issues.append(
                    {
                        "row": int(rows[i]),
                        "label": cache.classes[c],
                        "given": "present" if Y[i, c] else "absent",
                        "suggested": "absent" if Y[i, c] else "present",
                        "p_given": float(given[i]),
                        "p_suggested": float(1 - given[i]),
                    }
                )
        info["cv_accuracy"] = float(np.mean(acc)) if acc else None
    else:
        y = Y.astype(int)
        counts = np.bincount(y, minlength=C)
        present = counts[counts > 0]
        k = min(folds, int(present.min())) if len(present) else 0
        if k < 2 or len(present) < 2:
            info["skipped"] = "every class needs at least 2 labelled rows for cross-validation"
            return info
        info["folds"] = k
        P = _oof_proba(X, y, C, seed, k)
        thr = np.array([P[y == c, c].mean() if counts[c] else 1.0 for c in range(C)])
        info["cv_accuracy"] = float((P.argmax(1) == y).mean())
        given = P[np.arange(len(y)), y]
        conf = np.minimum(thr, 0.5)  # a class is "confident" at its threshold, or at 0.5 anyway
        other = np.where(P >= conf[None, :], P, -1.0)
        other[np.arange(len(y)), y] = -1.0
        alt = other.argmax(1)
        bad = np.flatnonzero(other[np.arange(len(y)), alt] > given)
        for i in bad:
            issues.append(
                {
                    "row": int(rows[i]),
                    "label": None,
                    "given": cache.classes[y[i]],
                    "suggested": cache.classes[alt[i]],
                    "p_given": float(given[i]),
                    "p_suggested": float(P[i, alt[i]]),
                }
            )
    issues.sort(key=lambda d: (d["p_given"], -d["p_suggested"]))
    info["n_flagged"] = len(issues)
    info["issues"] = issues[:top]
    return info


# --------------------------------------------------------------------------------- near duplicates


def _centred_unit(F: np.ndarray, mean: np.ndarray) -> np.ndarray:
    F = np.asarray(F, dtype=np.float32) - mean
    return F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)


def _feature_mean(features: Any, rows: np.ndarray, block: int) -> np.ndarray:
    total = np.zeros(features.shape[1], np.float64)
    for lo in range(0, len(rows), block):
        total += np.asarray(features[rows[lo : lo + block]], dtype=np.float64).sum(0)
    return (total / max(len(rows), 1)).astype(np.float32)


def near_duplicates(
    cache: Any,
    *,
    ratio: float = 0.7,
    min_similarity: float = 0.6,
    exact: float = 0.95,
    top: int = 24,
    block: int = 2048,
) -> dict[str, Any]:
    """Images of a later split (val, test) with a near-duplicate in an earlier one (train, val).

    Embeddings are centred (the mean embedding of every embedded row is subtracted: raw CNN features
    share a large common component that puts every cosine near 1) and L2-normalised. Each row of
    the later split is matched to its nearest neighbour in the earlier one and flagged when the match
    is an outlier for that row: the cosine distance to it is at most ``ratio`` times the distance to the
    second-nearest (a ratio test, so the rule adapts to each backbone's similarity scale) with cosine
    >= ``min_similarity``, or cosine >= ``exact`` whatever the second neighbour. Blocks of ``block``
    rows at a time: memory stays O(block^2) (no N x N matrix). Returns the flagged count per split pair
    and the ``top`` most distinctive flagged pairs (lowest distance ratio first).
    """
    splits = np.asarray(cache.splits)
    ok = np.asarray(cache.ok)
    feats = cache.features
    mean = _feature_mean(feats, np.flatnonzero(ok), block)
    counts: dict[str, int] = {}
    found: list[dict[str, Any]] = []
    for ref, query in SPLIT_PAIRS:
        ia = np.flatnonzero((splits == ref) & ok)
        ib = np.flatnonzero((splits == query) & ok)
        if len(ia) == 0 or len(ib) == 0:
            continue
        n = 0
        for lo in range(0, len(ib), block):
            B = _centred_unit(feats[ib[lo : lo + block]], mean)
            s1 = np.full(len(B), -np.inf, np.float32)  # best and second-best cosine per query row
            s2 = np.full(len(B), -np.inf, np.float32)
            j1 = np.zeros(len(B), np.int64)
            for lo2 in range(0, len(ia), block):
                S = B @ _centred_unit(feats[ia[lo2 : lo2 + block]], mean).T
                k = min(2, S.shape[1])
                part = np.argpartition(-S, k - 1, axis=1)[:, :k]
                vals = np.take_along_axis(S, part, 1)
                o = np.argsort(-vals, axis=1)
                part, vals = np.take_along_axis(part, o, 1), np.take_along_axis(vals, o, 1)
                b1 = vals[:, 0]
                b2 = vals[:, 1] if k > 1 else np.full(len(B), -np.inf, np.float32)
                new_best = b1 > s1
                s2 = np.where(new_best, np.maximum(s1, b2), np.maximum(s2, b1))
                j1 = np.where(new_best, lo2 + part[:, 0], j1)
                s1 = np.where(new_best, b1, s1)
            second = np.where(np.isfinite(s2), s2, -1.0)
            dist_ratio = (1.0 - s1) / np.maximum(1.0 - second, 1e-9)
            flag = (s1 >= exact) | ((dist_ratio <= ratio) & (s1 >= min_similarity))
            n += int(flag.sum())
            for r in np.flatnonzero(flag):
                found.append(
                    {
                        "similarity": float(s1[r]),
                        "second": float(second[r]),
                        "ratio": float(dist_ratio[r]),
                        "a": int(ia[j1[r]]),
                        "b": int(ib[lo + r]),
                    }
                )
            found = sorted(found, key=lambda d: (d["ratio"], -d["similarity"]))[:top]
        counts[f"{ref}/{query}"] = n
    return {
        "method": "centred cosine, nearest-neighbour ratio test",
        "ratio": ratio,
        "min_similarity": min_similarity,
        "exact": exact,
        "counts": counts,
        "n_pairs": int(sum(counts.values())),
        "pairs": found,
    }
