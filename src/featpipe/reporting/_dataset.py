"""Dataset section: classes and counts per split, co-occurrence, thumbnails, failures, data quality."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featpipe.reporting import _data, _plots, _quality
from featpipe.reporting._common import THUMBS_PER_CLASS, _Plots


def _dataset_section(
    caches: list[Any],
    plots: _Plots,
    thumbs: _data.Thumbnails,
    hashes: dict[str, str],
    out: Path,
    analyses: bool,
    ranked_runs: list[Any] | None = None,
    cross_fits: list[Any] | None = None,
) -> dict[str, Any]:
    """One dataset's section; ``ranked_runs``: its fitted heads, best on the leaderboard first (the best
    one checks the labels, with the best on other backbones and any cross-fitted fine-tune of its images)."""
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
        "quality": None,
    }
    if analyses:
        section["quality"] = _quality.quality_section(caches, ranked_runs, thumbs, hashes, out, cross_fits or [])
    return section
