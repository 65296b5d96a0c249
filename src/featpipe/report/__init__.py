"""`featpipe report`: one self-contained folder comparing every cached backbone x fitted head.

``build_report`` writes ``out/index.html`` (opens offline; PNG plots in ``out/plots/``, thumbnails in
``out/thumbs/``), ``out/leaderboard.csv`` and ``out/summary.md``. Re-running updates it: plots whose
inputs did not change and thumbnails (keyed by image content hash) are reused, stale plots removed,
and label-error / duplicate analyses are cached per feature cache in ``out/.analysis/``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import featpipe
from featpipe.errors import FeaturepipeError
from featpipe.metrics import main_metric_key
from featpipe.report import _analysis, _data, _plots

PLOT_STYLE = "s1"  # bump when figures change: cached PNGs are then redrawn
GALLERY = 12  # images per gallery (at most 24)
THUMBS_PER_CLASS = 8
SECONDARY = (
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "bal. acc"),
    ("f1_macro", "macro F1"),
    ("roc_auc", "ROC AUC"),
    ("average_precision", "AP / mAP"),
)


def _fmt(x: Any, digits: int = 3) -> str:
    v = _analysis.finite(x)
    return "–" if v is None else f"{v:.{digits}f}"


class _Plots:
    """PNG files in ``out/plots``: drawn only when missing (names carry an input fingerprint)."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "plots"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.used: set[str] = set()
        self.drawn = 0

    def get(self, name: str, draw: Callable[[Path], Any]) -> str | None:
        path = self.dir / f"{name}-{PLOT_STYLE}.png"
        if not path.exists():
            tmp = self.dir / f".{name}.tmp.png"
            if draw(tmp) is None:
                tmp.unlink(missing_ok=True)
                return None
            tmp.replace(path)
            self.drawn += 1
        self.used.add(path.name)
        return f"plots/{path.name}"

    def prune(self) -> None:
        for p in self.dir.glob("*.png"):
            if p.name not in self.used:
                p.unlink(missing_ok=True)


def _backbone_label(spec: dict[str, Any], run: str = "") -> str:
    parts = run.split("__")
    if len(parts) >= 3:
        return parts[1]
    name = str(spec.get("name", "?"))
    extra = [str(spec[k]) for k in ("weights",) if spec.get(k) and spec.get(k) != "imagenet"]
    if spec.get("image_size"):
        extra.append(f"{spec['image_size']}px")
    return name + (f" ({', '.join(extra)})" if extra else "")


def _dataset_key(info: dict[str, Any]) -> str:
    return f"{info.get('name')}\0{info.get('source')}"


# ------------------------------------------------------------------------------------------ dataset


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


# -------------------------------------------------------------------------------------- leaderboard


def _leaderboard_fingerprint(runs: Sequence[_data.ModelRun], chance: float | None, human: float | None) -> str:
    """Identity of a leaderboard chart's inputs: every run's files and both reference lines."""
    parts = [f"{r.slug}:{r.fingerprint}" for r in sorted(runs, key=lambda r: r.slug)]
    return hashlib.sha1(f"{'|'.join(parts)}|{chance}|{human}".encode()).hexdigest()[:10]


def _leader_row(m: _data.ModelRun) -> dict[str, Any]:
    mt = m.metrics
    sc = mt.get("scores") or {}
    val, test = sc.get("val") or {}, sc.get("test") or {}
    cache = mt.get("cache") or {}
    row = {
        "slug": m.slug,
        "run": m.run,
        "head": m.head,
        "dataset": (cache.get("dataset") or {}).get("name", "?"),
        "backbone": _backbone_label(cache.get("backbone") or {}, m.run),
        "layer": cache.get("layer") or (cache.get("backbone") or {}).get("layer") or "final",
        "metric": mt.get("metric", "?"),
        "val": _analysis.finite(val.get("main")),
        "test": _analysis.finite(test.get("main")),
        "train": _analysis.finite((sc.get("train") or {}).get("main")),
        "gap": _analysis.finite(mt.get("gap")),
        "embed_seconds": _analysis.finite(cache.get("embed_seconds")),
        "fit_seconds": _analysis.finite(mt.get("fit_seconds")),
        "feature_dim": cache.get("feature_dim"),
        "dir": str(m.dir),
        "task": mt.get("task"),
    }
    for key, _ in SECONDARY:
        row[f"{key}_test"] = _analysis.finite(test.get(key))
        row[f"{key}_val"] = _analysis.finite(val.get(key))
    return row


# ------------------------------------------------------------------------------------ model section


def _used_thresholds(mt: dict[str, Any], C: int) -> np.ndarray | None:
    th = mt.get("threshold")
    if not th:
        return None
    if mt.get("task") == "multilabel":
        pc = th.get("per_class")
        if th.get("used", "per-class") == "per-class" and pc:
            return np.asarray([th.get("global", 0.5) if v is None else v for v in pc], dtype=float)
        return np.full(C, float(th.get("global") or 0.5))
    return np.asarray([float(th.get("global") or 0.5)])


def _galleries(
    m: _data.ModelRun,
    P: dict[str, np.ndarray],
    split: str,
    classes: list[str],
    thumbs: _data.Thumbnails,
    hashes: dict[str, str],
) -> dict[str, list[dict[str, Any]]]:
    task = m.metrics["task"]
    rows = np.flatnonzero(P["split"] == split)
    if len(rows) == 0:
        return {"mistakes": [], "uncertain": []}
    proba = P["proba"][rows].astype(float)
    y = P["y_true"][rows]
    pred = P["pred"][rows]
    ok = ~np.isnan(proba).any(1)
    C = len(classes)

    def names(v: np.ndarray) -> str:
        return ", ".join(classes[k] for k in np.flatnonzero(v)) or "(none)"

    if task == "multilabel":
        th = _used_thresholds(m.metrics, C)
        th = np.full(C, 0.5) if th is None else th
        dist = np.abs(proba - th[None, :])
        wrong = pred.astype(bool) != y.astype(bool)
        conf = np.where(wrong, dist, -1).max(1)
        mistake = wrong.any(1) & ok
        certainty = dist.min(1)

        def describe(i: int) -> dict[str, Any]:
            top = np.argsort(-proba[i])[:4]
            return {
                "true": names(y[i]),
                "pred": names(pred[i]),
                "probs": ", ".join(f"{classes[k]} {proba[i, k]:.2f}" for k in top),
            }
    else:
        yi, pi = y.astype(int), pred.astype(int)
        mistake = (yi != pi) & ok
        conf = proba[np.arange(len(pi)), pi]
        if task == "binary":
            th = _used_thresholds(m.metrics, C)
            certainty = np.abs(proba[:, 1] - (th[0] if th is not None else 0.5))
        else:
            s = np.sort(proba, 1)
            certainty = s[:, -1] - s[:, -2] if C > 1 else s[:, -1]

        def describe(i: int) -> dict[str, Any]:
            top = np.argsort(-proba[i])[: min(3, C)]
            return {
                "true": classes[yi[i]],
                "pred": classes[pi[i]],
                "probs": ", ".join(f"{classes[k]} {proba[i, k]:.2f}" for k in top),
            }

    def items(idx: np.ndarray) -> list[dict[str, Any]]:
        out = []
        for i in idx:
            p = str(P["paths"][rows[i]])
            out.append(
                {
                    "url": thumbs.get(p, hashes.get(p)),
                    "id": str(P["ids"][rows[i]]),
                    "wrong": bool(mistake[i]),
                    **describe(int(i)),
                }
            )
        return out

    mis = np.flatnonzero(mistake)
    mis = mis[np.argsort(-conf[mis], kind="stable")][:GALLERY]
    unc = np.flatnonzero(ok)
    unc = unc[np.argsort(certainty[unc], kind="stable")][:GALLERY]
    return {"mistakes": items(mis), "uncertain": items(unc)}


def _model_section(
    m: _data.ModelRun, plots: _Plots, thumbs: _data.Thumbnails, hashes: dict[str, str]
) -> dict[str, Any]:
    mt = m.metrics
    task = mt["task"]
    classes = [str(c) for c in mt.get("classes", [])]
    C = len(classes)
    sc = mt.get("scores") or {}
    split = "test" if sc.get("test") else "val"
    s = sc.get(split) or {}
    key = f"{m.slug}-{m.fingerprint}"
    P = m.predictions() if m.has_predictions else None
    sec: dict[str, Any] = {
        "slug": m.slug,
        "run": m.run,
        "head": m.head,
        "task": task,
        "split": split,
        "metric": mt.get("metric"),
        "backbone": _backbone_label((mt.get("cache") or {}).get("backbone") or {}, m.run),
        "params": json.dumps(mt.get("params"), sort_keys=True)[:400],
        "refit": mt.get("refit"),
        "seed": mt.get("seed"),
        "dir": str(m.dir),
        "skipped_labels": mt.get("skipped_labels") or [],
        "notes": [],
    }
    # classification report
    per = s.get("per_class") or {}
    sec["report"] = [
        {
            "cls": c,
            **{
                k: _fmt((per.get(c) or {}).get(k))
                for k in ("precision", "recall", "f1", "roc_auc", "average_precision", "threshold")
            },
            "support": (per.get(c) or {}).get("support", "–"),
        }
        for c in classes
    ]
    sec["has_threshold_col"] = any((per.get(c) or {}).get("threshold") is not None for c in classes)
    avgs = ["micro", "macro", "weighted"] + (["samples"] if task == "multilabel" else [])
    if task == "binary":
        avgs = ["binary"] + avgs
    sec["averages"] = [
        {"name": a, **{k: _fmt(s.get(f"{k}_{a}")) for k in ("precision", "recall", "f1")}}
        for a in avgs
        if s.get(f"f1_{a}") is not None
    ]
    sec["overall"] = [
        (lbl, _fmt(s.get(k)))
        for k, lbl in SECONDARY + (("hamming_loss", "Hamming loss"),)
        if s.get(k) is not None
    ]
    cm = s.get("confusion_matrix")
    sec["plot_cm"] = None
    if cm:
        if task == "multilabel":
            sec["plot_cm"] = plots.get(f"{key}-cm", lambda p: _plots.multilabel_confusion(p, cm, classes))
        else:
            sec["plot_cm"] = plots.get(
                f"{key}-cm",
                lambda p: _plots.heatmap(
                    p,
                    np.asarray(cm),
                    classes,
                    classes,
                    title=f"Confusion matrix ({split}; colour = row share)",
                    xlabel="predicted",
                    ylabel="true",
                    normalize_rows=True,
                ),
            )
    sec["most_confused"] = [{"true": a, "pred": b, "count": n} for a, b, n in (s.get("most_confused") or [])]
    th = mt.get("threshold")
    sec["plot_threshold"] = None
    sec["threshold"] = None
    if th and (th.get("curve") or {}).get("thresholds"):
        curve = th["curve"]
        sec["threshold"] = {
            "rule": th.get("rule"),
            "metric": th.get("metric"),
            "global": _fmt(th.get("global"), 4),
            "used": th.get("used", "global"),
        }
        sec["plot_threshold"] = plots.get(
            f"{key}-thr",
            lambda p: _plots.threshold_curve(
                p,
                curve["thresholds"],
                curve["scores"],
                _analysis.finite(th.get("global")),
                str(th.get("metric")),
                th.get("plateau"),
            ),
        )
    sec["plot_perclass"] = None
    if task == "multilabel" and th and th.get("per_class"):
        sec["per_class_thresholds"] = [
            {
                "cls": c,
                "threshold": _fmt(v, 4),
                "source": (th.get("per_class_source") or [""] * C)[k],
                "f1": _fmt((per.get(c) or {}).get("f1")),
            }
            for k, (c, v) in enumerate(zip(classes, th["per_class"], strict=False))
        ]
        sec["plot_perclass"] = plots.get(
            f"{key}-perclass",
            lambda p: _plots.per_class_thresholds(
                p, classes, th["per_class"], [(per.get(c) or {}).get("f1") for c in classes]
            ),
        )
    sec["plot_rocpr"] = None
    sec["galleries"] = {"mistakes": [], "uncertain": []}
    if P is not None:
        rows = P["split"] == split
        proba = P["proba"][rows].astype(float)
        y = P["y_true"][rows]
        keep = ~np.isnan(proba).any(1) if len(proba) else np.zeros(0, bool)
        if keep.sum() > 1:
            sec["plot_rocpr"] = plots.get(
                f"{key}-rocpr", lambda p: _plots.roc_pr(p, task, y[keep], proba[keep], classes)
            )
        sec["galleries"] = _galleries(m, P, split, classes, thumbs, hashes)
    else:
        sec["notes"].append("predictions.npz missing: no curves or galleries")
    return sec


# ------------------------------------------------------------------------------------------ facts


def _run_facts(caches: list[Any], runs: list[_data.ModelRun]) -> dict[str, Any]:
    from importlib import metadata

    libs = {}
    for pkg in (
        "numpy",
        "scikit-learn",
        "torch",
        "timm",
        "h5py",
        "lightgbm",
        "matplotlib",
        "jinja2",
        "pillow",
    ):
        try:
            libs[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
    except Exception:  # noqa: BLE001 - hardware facts are best effort
        pass
    cache_rows = []
    for c in caches:
        t = c.attrs.get("timings") or {}
        cache_rows.append(
            {
                "file": Path(c.path).name,
                "key": str(c.key)[:16],
                "seed": c.seed,
                "split_seed": c.dataset.get("split_seed"),
                "backbone": json.dumps(c.backbone, sort_keys=True),
                "dim": c.feature_dim,
                "rows": len(c),
                "embed_seconds": _fmt(c.embed_seconds, 1),
                "device": t.get("device", "?"),
                "host": t.get("host", "?"),
                "versions": ", ".join(f"{k} {v}" for k, v in sorted((c.versions or {}).items())),
            }
        )
    head_seeds = sorted({str(r.metrics.get("seed")) for r in runs})
    model_versions = sorted(
        {", ".join(f"{k} {v}" for k, v in sorted((r.metrics.get("versions") or {}).items())) for r in runs}
    )
    return {
        "featpipe": featpipe.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_device": device,
        "libs": libs,
        "caches": cache_rows,
        "head_seeds": head_seeds,
        "model_versions": model_versions,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------- outputs

CSV_COLS = [
    "dataset",
    "backbone",
    "layer",
    "head",
    "metric",
    "val",
    "test",
    "train",
    "gap",
    "accuracy_test",
    "balanced_accuracy_test",
    "f1_macro_test",
    "roc_auc_test",
    "average_precision_test",
    "embed_seconds",
    "fit_seconds",
    "feature_dim",
    "chance",
    "human_baseline",
    "run",
    "dir",
]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r[k]))
                for k in CSV_COLS
            }
        )
    path.write_text(buf.getvalue())


def _summary_md(ctx: dict[str, Any]) -> str:
    L = [
        "# featpipe report",
        "",
        f"Generated {ctx['facts']['created']} by featpipe {ctx['facts']['featpipe']}.",
        "",
    ]
    for d in ctx["datasets"]:
        L.append(f"## Dataset {d['name']} ({d['task']}, {len(d['classes'])} classes)")
        L.append("")
        L.append(
            f"- {d['n_images']} images, {d['n_ok']} embedded, {d['n_failed']} failed, "
            f"{d['n_skipped']} skipped by the loader"
        )
        for a in d["analyses"]:
            li, dup = a["li"], a["dup"]
            sub = f" (subsample of {li['n_used']})" if li.get("subsampled") else ""
            if li.get("cv_accuracy") is not None:
                sub += f", out-of-fold probe accuracy {li['cv_accuracy']:.3f}"
            li_txt = (
                li["skipped"]
                or f"{li['n_flagged']} suspected label errors"
                + (" ((image, label) values)" if d["task"] == "multilabel" else "")
                + f" among {li['n_labeled']} rows{sub}"
            )
            L.append(
                f"- {a['backbone']}: {li_txt}; {dup['n_pairs']} near-duplicate pairs across splits "
                f"(nearest-neighbour distance ratio <= {dup['ratio']})"
            )
        L.append("")
    for b in ctx["boards"]:
        L.append(f"## Leaderboard: {b['dataset']} ({b['metric']}, sorted by validation)")
        L.append("")
        if b["chance"] is not None:
            L.append(
                f"Chance level ({b['chance_rule']}): {b['chance']:.4f}"
                + (f"; human baseline: {b['human']:.4f}" if b["human"] is not None else "")
            )
            L.append("")
        L.append("| backbone | layer | head | val | test | gap | fit s |")
        L.append("|---|---|---|---|---|---|---|")
        for r in b["rows"]:
            L.append(
                f"| {r['backbone']} | {r['layer']} | {r['head']} | {_fmt(r['val'], 4)} | "
                f"{_fmt(r['test'], 4)} | {_fmt(r['gap'], 4)} | {_fmt(r['fit_seconds'], 2)} |"
            )
        best = b["rows"][0] if b["rows"] else None
        if best:
            L += [
                "",
                f"Best on validation: **{best['backbone']} + {best['head']}** "
                f"(val {_fmt(best['val'], 4)}, test {_fmt(best['test'], 4)}).",
            ]
        L.append("")
    if ctx["histories"]:
        L.append("## Fine-tune runs")
        L.append("")
        for h in ctx["histories"]:
            L.append(f"- {h['name']}: {h['n_epochs']} epochs, last val metric {h['last_val']}")
        L.append("")
    if ctx["problems"]:
        L.append("## Problems")
        L.append("")
        L += [f"- {a}: {b}" for a, b in ctx["problems"]]
        L.append("")
    return "\n".join(L)


def _render(ctx: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("featpipe.report", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["f"] = _fmt
    env.filters["pct"] = lambda v: "–" if _analysis.finite(v) is None else f"{100 * float(v):.1f}%"
    css = (Path(__file__).parent / "templates" / "style.css").read_text()
    return env.get_template("index.html").render(css=css, **ctx)


def build_report(
    cache_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    out: str | Path = "report",
    caches: Sequence[str | Path] | None = None,
    human_baseline: float | None = None,
    *,
    analyses: bool = True,
) -> Path:
    """Build (or update) the report folder ``out``; return the path of ``out/index.html``.

    ``cache_dir`` (every ``*.h5``) and ``caches`` (explicit files) give feature caches; ``models_dir`` the
    ``featpipe fit-head --out`` folder. With models only, the caches their metrics point to are used when
    they still exist. ``human_baseline`` (a value of the main metric) is drawn as a reference line.
    ``analyses=False`` skips the label-error and near-duplicate analyses.
    """
    if human_baseline is not None:
        hb = _analysis.finite(human_baseline)
        if hb is None:
            raise FeaturepipeError(f"human baseline must be a number, got {human_baseline!r}")
        human_baseline = hb
    cache_files = _data.find_cache_files(cache_dir, list(caches or []))
    runs, bad_runs = _data.find_model_runs(models_dir)
    histories, bad_hist = _data.find_histories(models_dir)
    if not cache_files and cache_dir is None and not caches:
        # models only: use the caches they were fitted on, where still present
        cache_files = sorted(
            {Path(p) for r in runs if (p := (r.metrics.get("cache") or {}).get("path")) and Path(p).exists()},
            key=lambda p: p.name,
        )
    if not cache_files and not runs and not histories:
        where = ", ".join(str(x) for x in (cache_dir, models_dir) if x is not None) or "nothing given"
        bad = (bad_runs + bad_hist)[:1]
        why = f"; {bad[0][0]}: {bad[0][1]}" if bad else ""
        raise FeaturepipeError(
            f"nothing to report: no feature caches or fitted heads found ({where}){why}; "
            "run featpipe embed / fit-head first"
        )
    opened, bad_caches = _data.open_caches(cache_files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _Plots(out)
    thumbs = _data.Thumbnails(out)
    hashes: dict[str, str] = {}
    for c in opened:
        for p, h, ok in zip(c.paths, c.content_hash, c.ok, strict=True):
            if ok and h:
                hashes[str(p)] = str(h)

    # datasets (one section per dataset; caches of other backbones on it add analyses)
    by_ds: dict[str, list[Any]] = defaultdict(list)
    for c in opened:
        by_ds[_dataset_key(c.dataset)].append(c)
    datasets = [_dataset_section(cs, plots, thumbs, hashes, out, analyses) for cs in by_ds.values()]

    # leaderboards, one per dataset (and metric)
    cache_of = {str(c.key) + _dataset_key(c.dataset): c for c in opened}
    groups: dict[tuple[str, str], list[_data.ModelRun]] = defaultdict(list)
    for r in runs:
        ds = (r.metrics.get("cache") or {}).get("dataset") or {}
        groups[(_dataset_key(ds), str(r.metrics.get("metric")))].append(r)
    boards, all_rows = [], []
    for (dkey, metric), rs in groups.items():
        # selection by validation only; ties: smaller train-val gap, then faster fit
        rows = sorted(
            (_leader_row(r) for r in rs),
            key=lambda x: (
                -(x["val"] if x["val"] is not None else -1e9),
                x["gap"] if x["gap"] is not None else 1e9,
                x["fit_seconds"] or 0.0,
            ),
        )
        chance = None
        for r in rs:
            c = cache_of.get(str((r.metrics.get("cache") or {}).get("key")) + dkey)
            if c is not None:
                chance = _analysis.chance_level(c, metric)
                break
        ch = chance["value"] if chance else None
        for row in rows:
            row["chance"], row["human_baseline"] = ch, human_baseline
        names = [
            f"{x['backbone']} / {x['layer']} / {x['head']}"
            if x["layer"] != "final" and f"@{x['layer']}" not in x["backbone"]
            else f"{x['backbone']} / {x['head']}"
            for x in rows
        ]
        ds_name = rows[0]["dataset"] if rows else "?"
        slug = _data.safe_slug(f"lb-{ds_name}-{metric}")
        plot = plots.get(
            f"{slug}-{_leaderboard_fingerprint(rs, ch, human_baseline)}",
            lambda p, rows=rows, names=names, metric=metric, ch=ch: _plots.leaderboard(
                p, names, [x["val"] for x in rows], [x["test"] for x in rows], metric, ch, human_baseline
            ),
        )
        task = rows[0]["task"] if rows else "multiclass"
        try:
            main_key = main_metric_key(metric, task)
        except FeaturepipeError:
            main_key = ""
        boards.append(
            {
                "dataset": ds_name,
                "metric": metric,
                "rows": rows,
                "plot": plot,
                "chance": ch,
                "secondary": [(k, lbl) for k, lbl in SECONDARY if k != main_key],
                "chance_rule": chance["rule"] if chance else None,
                "chance_split": chance["split"] if chance else None,
                "human": human_baseline,
                "slug": slug,
                "task": rows[0]["task"] if rows else "?",
            }
        )
        all_rows += rows
    by_slug = {r.slug: r for r in runs}
    models = [
        {
            "dataset": b["dataset"],
            "metric": b["metric"],
            "slug": b["slug"],
            "models": [_model_section(by_slug[row["slug"]], plots, thumbs, hashes) for row in b["rows"]],
        }
        for b in boards
    ]

    hist = []
    for h in histories:
        last = next(
            (e.get("val_metric") for e in reversed(h.epochs) if e.get("val_metric") is not None), None
        )
        plot = (
            plots.get(
                f"ft-{_data.safe_slug(h.name)}-{_data.file_digest(h.path)}",
                lambda p, h=h: _plots.history(p, h.epochs, h.name),
            )
            if h.epochs
            else None
        )
        hist.append(
            {
                "name": h.name,
                "plot": plot,
                "n_epochs": len(h.epochs),
                "last_val": _fmt(last, 4),
                "epochs": h.epochs[-50:],
                "extra": json.dumps(h.extra, sort_keys=True)[:400] if h.extra else "",
            }
        )

    problems = bad_caches + bad_runs + bad_hist
    ctx = {
        "datasets": datasets,
        "boards": boards,
        "models": models,
        "histories": hist,
        "facts": _run_facts(opened, runs),
        "problems": problems,
        "human": human_baseline,
        "n_thumbs": len(thumbs.used),
    }
    html = _render(ctx)
    _write_csv(out / "leaderboard.csv", all_rows)
    (out / "summary.md").write_text(_summary_md(ctx) + "\n")
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(index)
    plots.prune()
    return index


__all__ = ["build_report"]
