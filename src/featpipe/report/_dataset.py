"""Dataset section: classes and counts per split, co-occurrence, thumbnails, failures, analyses."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.report import _analysis, _data, _plots
from featpipe.report._common import (
    THUMBS_PER_CLASS,
    _backbone_label,
    _Plots,
)


def _dataset_section(
    caches: list[Any],
    plots: _Plots,
    thumbs: _data.Thumbnails,
    hashes: dict[str, str],
    out: Path,
    analyses: bool,
) -> dict[str, Any]:
    c = caches[0]
    info = c.dataset
    classes = [str(x) for x in c.classes]
    C = len(classes)
    name = str(info.get("name") or Path(c.path).stem.split("__")[0])
    slug = _data.safe_slug(f"ds-{name}")
    digest = _data.file_digest(Path(c.path))
    splits = [s for s in ("train", "val", "test") if (c.splits == s).any()]
    splits += sorted({str(s) for s in c.splits} - set(splits))
    labels = np.asarray(c.labels)
    usable = c.ok & c.labeled
    counts: dict[str, np.ndarray] = {}
    for s in splits:
        m = usable & (c.splits == s)
        if c.task == "multilabel":
            counts[s] = labels[m].astype(int).sum(0) if m.any() else np.zeros(C, int)
        else:
            counts[s] = np.bincount(labels[m].astype(int), minlength=C)[:C]
    labelled_splits = [s for s in splits if counts[s].sum() > 0]
    table = [
        {
            "cls": cl,
            "counts": [int(counts[s][k]) for s in labelled_splits],
            "total": int(sum(counts[s][k] for s in labelled_splits)),
        }
        for k, cl in enumerate(classes)
    ]
    split_rows = []
    for s in splits:
        m = c.splits == s
        split_rows.append(
            {
                "split": s,
                "images": int(m.sum()),
                "ok": int((m & c.ok).sum()),
                "labelled": int((m & c.labeled).sum()),
                "failed": int((m & ~c.ok).sum()),
            }
        )
    plot_counts = (
        plots.get(
            f"{slug}-{digest}-counts",
            lambda p: _plots.split_counts(p, classes, {s: counts[s] for s in labelled_splits}),
        )
        if labelled_splits
        else None
    )
    plot_cooc = None
    if c.task == "multilabel" and usable.any():
        Y = labels[usable].astype(np.int64)
        co = Y.T @ Y
        plot_cooc = plots.get(
            f"{slug}-{digest}-cooc",
            lambda p: _plots.heatmap(
                p,
                co,
                classes,
                classes,
                title="Label co-occurrence (images with both labels; diagonal = count)",
            ),
        )
    # sample grid: up to THUMBS_PER_CLASS per class, train rows first, seeded
    rng = np.random.default_rng(0)
    grid = []
    order = np.argsort([{"train": 0, "val": 1, "test": 2}.get(str(s), 3) for s in c.splits], kind="stable")
    for k, cl in enumerate(classes):
        has = labels[:, k].astype(bool) if c.task == "multilabel" else labels == k
        idx = order[(usable & has)[order]]
        if len(idx) > 4 * THUMBS_PER_CLASS:
            idx = np.sort(rng.choice(idx, 4 * THUMBS_PER_CLASS, replace=False))
        items = []
        for i in idx:
            url = thumbs.get(str(c.paths[i]), hashes.get(str(c.paths[i])))
            if url:
                items.append({"url": url, "id": str(c.ids[i]), "split": str(c.splits[i])})
            if len(items) >= THUMBS_PER_CLASS:
                break
        grid.append({"cls": cl, "thumbs": items, "n": int(has[usable].sum())})
    failed_idx = np.flatnonzero(~c.ok)
    failed = [
        {
            "id": str(c.ids[i]),
            "path": str(c.paths[i]),
            "split": str(c.splits[i]),
            "status": {0: "pending", 2: "failed"}.get(int(c.status[i]), str(c.status[i])),
            "error": str(c.errors[i]) or "–",
        }
        for i in failed_idx[:200]
    ]
    section: dict[str, Any] = {
        "name": name,
        "slug": slug,
        "task": c.task,
        "source": info.get("source"),
        "classes": classes,
        "n_images": len(c),
        "n_ok": int(c.ok.sum()),
        "n_skipped": int(info.get("n_skipped") or 0),
        "split_seed": info.get("split_seed"),
        "split_fractions": info.get("split_fractions"),
        "splits": labelled_splits,
        "table": table,
        "split_rows": split_rows,
        "plot_counts": plot_counts,
        "plot_cooc": plot_cooc,
        "grid": grid,
        "failed": failed,
        "n_failed": len(failed_idx),
        "caches": [Path(x.path).name for x in caches],
        "analyses": [],
    }
    if analyses:
        found = [_cache_analyses(cache, thumbs, hashes, out) for cache in caches]
        # the strongest probe first: its flags are the most trustworthy (a weak backbone flags its own mistakes)
        section["analyses"] = sorted(found, key=lambda a: -(_analysis.finite(a["li"].get("cv_accuracy")) or -1.0))
    return section


def _cache_analyses(c: Any, thumbs: _data.Thumbnails, hashes: dict[str, str], out: Path) -> dict[str, Any]:
    """Label issues and near-duplicates of one cache (cached in out/.analysis by cache identity)."""
    adir = out / ".analysis"
    adir.mkdir(parents=True, exist_ok=True)
    params = {"v": 3, "folds": 5, "max_rows": _analysis.MAX_CV_ROWS, "dup_ratio": 0.7, "top": 24}
    ident = _data.file_digest(Path(c.path))
    apath = adir / f"{Path(c.path).stem}-{ident}.json"
    data = None
    if apath.exists():
        try:
            data = json.loads(apath.read_text())
            if data.get("params") != params:
                data = None
        except ValueError:
            data = None
    if data is None:
        t0 = time.perf_counter()
        li = _analysis.label_issues(
            c, folds=params["folds"], max_rows=params["max_rows"], seed=c.seed, top=params["top"]
        )
        t1 = time.perf_counter()
        dup = _analysis.near_duplicates(c, ratio=params["dup_ratio"], top=params["top"])
        data = {
            "params": params,
            "label_issues": li,
            "duplicates": dup,
            "seconds": {"label_issues": t1 - t0, "duplicates": time.perf_counter() - t1},
        }
        for old in adir.glob(f"{Path(c.path).stem}-*.json"):
            old.unlink(missing_ok=True)
        apath.write_text(json.dumps(data))

    def item(i: int) -> dict[str, Any]:
        p = str(c.paths[i])
        return {"url": thumbs.get(p, hashes.get(p)), "id": str(c.ids[i]), "split": str(c.splits[i])}

    li, dup = data["label_issues"], data["duplicates"]
    issues = [{**item(d["row"]), **d} for d in li["issues"]]
    pairs = [{**d, "a": item(d["a"]), "b": item(d["b"])} for d in dup["pairs"]]
    return {
        "cache": Path(c.path).name,
        "backbone": _backbone_label(c.backbone, Path(c.path).stem),
        "li": li,
        "issues": issues,
        "dup": dup,
        "pairs": pairs,
        "seconds": data["seconds"],
    }
