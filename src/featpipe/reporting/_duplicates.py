"""Exact duplicates (same content hash) and near-copies across splits, on one feature cache.

Near-copies are judged against real near-copies: a seeded sample of train images is cropped a little,
resized down and up, and re-encoded as JPEG, the copies are embedded with the cache's own backbone,
and the cosine similarity a copy keeps to its original (centred embeddings, as the search uses) gives
the threshold. It is raised, when needed, above nearly every similarity between distinct train
images and their nearest neighbour, so that flagged pairs are copies and not look-alikes.
"""

from __future__ import annotations

import io
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_PAIRS = (("train", "test"), ("train", "val"), ("val", "test"))
AUGMENTATIONS = ("crop", "resize", "jpeg", "crop+resize+jpeg")
COPY_QUANTILE = 0.05  # the threshold keeps this share of synthetic copies out, at most
DISTINCT_QUANTILE = 0.995  # and lets at most this share of distinct nearest neighbours in
MIN_COPIES_FOUND = 0.5  # below this share of copies found, the backbone cannot tell copies from look-alikes


# ----------------------------------------------------------------------------------- exact copies


def exact_duplicates(cache: Any, top: int = 24) -> dict[str, Any]:
    """Groups of embedded rows with the same content hash: how many, how many span two splits (leakage
    a split given by the source can hold; featpipe's own split keeps copies together) and how many
    carry different labels; the ``top`` groups, cross-split first."""
    ok = np.asarray(cache.ok)
    by: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(ok):
        h = cache.content_hash[i]
        if h:
            by[str(h)].append(int(i))
    groups = []
    labels = np.asarray(cache.labels)
    for h, rows in by.items():
        if len(rows) < 2:
            continue
        splits = sorted({str(cache.splits[r]) for r in rows})
        labs = {labels[r].tobytes() for r in rows if cache.labeled[r]}
        groups.append({"hash": h, "rows": rows, "splits": splits, "cross_split": len(splits) > 1,
                       "label_conflict": len(labs) > 1})
    groups.sort(key=lambda g: (not g["cross_split"], not g["label_conflict"], -len(g["rows"]), g["rows"][0]))
    return {
        "n_groups": len(groups),
        "n_rows": int(sum(len(g["rows"]) for g in groups)),
        "n_cross_split": int(sum(g["cross_split"] for g in groups)),
        "n_label_conflicts": int(sum(g["label_conflict"] for g in groups)),
        "groups": groups[:top],
    }


# ----------------------------------------------------------------------------------- embeddings


def _centred_unit(F: Any, mean: np.ndarray) -> np.ndarray:
    F = np.asarray(F, dtype=np.float32) - mean
    return F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)


def _feature_mean(features: Any, rows: np.ndarray, block: int) -> np.ndarray:
    total = np.zeros(features.shape[1], np.float64)
    for lo in range(0, len(rows), block):
        total += np.asarray(features[rows[lo : lo + block]], dtype=np.float64).sum(0)
    return (total / max(len(rows), 1)).astype(np.float32)


def _top2(queries: np.ndarray, features: Any, ref: np.ndarray, mean: np.ndarray, block: int,
          exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best and second-best cosine of each (centred, unit) query row among the ``ref`` rows, and the
    position in ``ref`` of the best; ``exclude[q]`` (a row number per query) is never a neighbour."""
    n = len(queries)
    s1 = np.full(n, -np.inf, np.float32)
    s2 = np.full(n, -np.inf, np.float32)
    j1 = np.zeros(n, np.int64)
    for lo in range(0, len(ref), block):
        S = queries @ _centred_unit(features[ref[lo : lo + block]], mean).T
        if exclude is not None:
            S[exclude[:, None] == ref[None, lo : lo + block]] = -np.inf
        k = min(2, S.shape[1])
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(S, part, 1)
        o = np.argsort(-vals, axis=1)
        part, vals = np.take_along_axis(part, o, 1), np.take_along_axis(vals, o, 1)
        b1 = vals[:, 0]
        b2 = vals[:, 1] if k > 1 else np.full(n, -np.inf, np.float32)
        new_best = b1 > s1
        s2 = np.where(new_best, np.maximum(s1, b2), np.maximum(s2, b1))
        j1 = np.where(new_best, lo + part[:, 0], j1)
        s1 = np.where(new_best, b1, s1)
    return s1, s2, j1


# ----------------------------------------------------------------------------------- calibration


def _augment(img: Any, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A near-copy of ``img`` as file bytes and suffix: a crop of 1-5% per side resized back, a
    downscale to 75-90% and back, and/or a JPEG re-encode at quality 70-90."""
    from PIL import Image

    w, h = img.size
    if "crop" in kind:
        left, top, right, bottom = rng.uniform(0.01, 0.05, 4)
        x0, y0 = round(left * w), round(top * h)
        box = (x0, y0, max(round(w - right * w), x0 + 1), max(round(h - bottom * h), y0 + 1))
        img = img.crop(box).resize((w, h), Image.BICUBIC)
    if "resize" in kind:
        f = rng.uniform(0.75, 0.9)
        small = (max(1, round(w * f)), max(1, round(h * f)))
        img = img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    if "jpeg" in kind:
        img.save(buf, "JPEG", quality=int(rng.integers(70, 91)))
        return buf.getvalue(), ".jpg"
    img.save(buf, "PNG")
    return buf.getvalue(), ".png"


def _load_backbone(cache: Any) -> Any:
    from featpipe.backbones import load_backbone, locate_weights

    spec = locate_weights(dict(cache.backbone))
    return load_backbone(spec, "cpu", preprocessing=cache.config.get("preprocessing"))


def _copies(cache: Any, open_image: Any, ref: np.ndarray, mean: np.ndarray, n_images: int,
            rng: np.random.Generator, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | str:
    """Similarity of each synthetic copy to its original, which copies find their original as nearest
    train image, which augmentation each is, and how many originals; or why there are none."""
    from featpipe.errors import FeaturepipeError
    from featpipe.features.embed import run_backbone

    if cache.backbone.get("kind") == "fused":
        return "features of several backbones (fused): copies cannot be embedded the same way"
    try:
        backbone = _load_backbone(cache)
    except Exception as e:  # noqa: BLE001 - missing weights, an unknown or foreign spec: a recorded skip
        return f"the backbone cannot be loaded here ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"
    originals: list[int] = []
    files: list[str] = []
    with tempfile.TemporaryDirectory(prefix="featpipe-copies-") as tmp:
        for r in rng.permutation(ref):
            if len(originals) >= n_images:
                break
            try:
                img = open_image(str(cache.paths[r]))
            except (FeaturepipeError, OSError, ValueError, IndexError):
                continue
            originals.append(int(r))
            for a, kind in enumerate(AUGMENTATIONS):
                data, suffix = _augment(img, kind, rng)
                f = Path(tmp) / f"{len(originals) - 1:04d}-{a}{suffix}"
                f.write_bytes(data)
                files.append(str(f))
        if not originals:
            return "no train image could be read"
        feats = np.zeros((len(files), backbone.feature_dim), np.float32)
        good = np.zeros(len(files), bool)
        for b in run_backbone(backbone, files, np.arange(len(files)), batch_size=32, num_workers=0):
            feats[b.rows] = b.features
            good[b.rows] = b.status == 1
    orig = np.repeat(np.asarray(originals), len(AUGMENTATIONS))[good]
    kind = np.tile(np.arange(len(AUGMENTATIONS)), len(originals))[good]
    Q = _centred_unit(feats[good], mean)
    sim = np.sum(Q * _centred_unit(cache.features[orig], mean), axis=1)
    s1, _, j1 = _top2(Q, cache.features, ref, mean, block)
    return sim, (ref[j1] == orig) & (s1 <= sim + 1e-6), kind, len(originals)


def _distinct(cache: Any, ref: np.ndarray, mean: np.ndarray, n: int, rng: np.random.Generator,
              block: int) -> np.ndarray:
    """Similarity of ``n`` seeded train images to their nearest other train image of other content."""
    hashes = np.asarray(cache.content_hash, dtype=object)
    rows = np.sort(rng.choice(ref, min(n, len(ref)), replace=False))
    best = np.full(len(rows), -np.inf, np.float32)
    for lo in range(0, len(rows), block):
        q = rows[lo : lo + block]
        Qd = _centred_unit(cache.features[q], mean)
        for lo2 in range(0, len(ref), block):
            rr = ref[lo2 : lo2 + block]
            S = Qd @ _centred_unit(cache.features[rr], mean).T
            same = (q[:, None] == rr[None, :]) | ((hashes[q][:, None] == hashes[rr][None, :])
                                                  & (hashes[q][:, None] != ""))
            S[same] = -np.inf
            best[lo : lo + block] = np.maximum(best[lo : lo + block], S.max(1))
    return best[np.isfinite(best)]


def calibrate(cache: Any, open_image: Any, *, n_images: int = 64, n_distinct: int = 1000, seed: int = 0,
              block: int = 2048) -> dict[str, Any]:
    """The near-copy threshold of this cache's backbone, and whether it separates copies at all.

    ``open_image(path)`` returns a row's PIL image (or raises). Up to ``n_images`` seeded train images
    get one copy per :data:`AUGMENTATIONS`; each copy is embedded and searched among the train rows
    as a val/test image is. The threshold is the :data:`COPY_QUANTILE` quantile of the copies'
    similarity to their original, raised to the :data:`DISTINCT_QUANTILE` quantile of the similarity
    of ``n_distinct`` seeded train images to their nearest other train image when that is higher.
    ``copies_found``: the share of copies whose nearest train image is their original, at or above the
    threshold; below :data:`MIN_COPIES_FOUND` the backbone does not tell copies from look-alikes on
    this data (``separable`` is False) and nothing should be flagged.
    """
    ok = np.asarray(cache.ok)
    ref = np.flatnonzero(ok & (np.asarray(cache.splits) == "train"))
    if len(ref) < 2:
        ref = np.flatnonzero(ok)
    out: dict[str, Any] = {"augmentations": list(AUGMENTATIONS), "copy_quantile": COPY_QUANTILE,
                           "distinct_quantile": DISTINCT_QUANTILE, "min_copies_found": MIN_COPIES_FOUND,
                           "threshold": None, "separable": False, "skipped": None}
    if len(ref) < 2:
        out["skipped"] = "fewer than two embedded images"
        return out
    rng = np.random.default_rng(seed)
    mean = _feature_mean(cache.features, np.flatnonzero(ok), block)
    got = _copies(cache, open_image, ref, mean, n_images, rng, block)
    if isinstance(got, str):
        out["skipped"] = got
        return out
    sim, found, kind, n_orig = got
    d1 = _distinct(cache, ref, mean, n_distinct, rng, block)
    t_copy = float(np.quantile(sim, COPY_QUANTILE))
    t_distinct = float(np.quantile(d1, DISTINCT_QUANTILE)) if len(d1) else -1.0
    t = max(t_copy, t_distinct)
    share = float(np.mean(found & (sim >= t)))
    out.update(
        threshold=t, separable=share >= MIN_COPIES_FOUND,
        threshold_from="synthetic copies" if t_copy >= t_distinct else "distinct images",
        n_images=n_orig, n_copies=int(len(sim)), n_distinct=int(len(d1)),
        copy_median=float(np.median(sim)), distinct_median=float(np.median(d1)) if len(d1) else None,
        copies_found=share,
        per_augmentation={k: float(np.mean((found & (sim >= t))[kind == a])) for a, k in enumerate(AUGMENTATIONS)},
        distinct_above=float(np.mean(d1 >= t)) if len(d1) else None,
    )
    return out


# ----------------------------------------------------------------------------------- search


def near_copies(cache: Any, threshold: float, *, top: int = 24, block: int = 2048) -> dict[str, Any]:
    """Images of a later split (val, test) whose nearest image in an earlier one (train, val) has a
    centred cosine similarity of at least ``threshold``; exact copies (same content hash) are left to
    :func:`exact_duplicates`. Blocks of ``block`` rows: memory O(block^2). Returns the count per split
    pair and the ``top`` most similar pairs."""
    splits = np.asarray(cache.splits)
    ok = np.asarray(cache.ok)
    feats = cache.features
    hashes = np.asarray(cache.content_hash, dtype=object)
    mean = _feature_mean(feats, np.flatnonzero(ok), block)
    counts: dict[str, int] = {}
    found: list[dict[str, Any]] = []
    for ref_split, query_split in SPLIT_PAIRS:
        ia = np.flatnonzero((splits == ref_split) & ok)
        ib = np.flatnonzero((splits == query_split) & ok)
        if len(ia) == 0 or len(ib) == 0:
            continue
        n = 0
        for lo in range(0, len(ib), block):
            q = ib[lo : lo + block]
            s1, s2, j1 = _top2(_centred_unit(feats[q], mean), feats, ia, mean, block)
            a = ia[j1]
            flag = (s1 >= threshold) & ~((hashes[a] == hashes[q]) & (hashes[q] != ""))
            n += int(flag.sum())
            for r in np.flatnonzero(flag):
                found.append({"similarity": float(s1[r]), "second": float(s2[r]) if np.isfinite(s2[r]) else None,
                              "a": int(a[r]), "b": int(q[r])})
            found = sorted(found, key=lambda d: -d["similarity"])[:top]
        counts[f"{ref_split}/{query_split}"] = n
    return {"threshold": threshold, "counts": counts, "n_pairs": int(sum(counts.values())), "pairs": found}
