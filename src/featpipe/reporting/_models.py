"""Per-model section: reports, confusion matrices, curves, thresholds, the search curve and galleries."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from featpipe.errors import FeaturepipeError
from featpipe.heads.metrics import get_metric
from featpipe.reporting import _analysis, _data, _plots
from featpipe.reporting._common import (
    GALLERY,
    SECONDARY,
    _backbone_label,
    _fmt,
    _Plots,
)


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


def _search_metric(metric: str, task: str) -> str:
    """What the search scored: the metric, or for one-vs-rest heads the per-label metric of each label's search."""
    if task != "multilabel":
        return metric
    try:
        return f"{get_metric(metric, task).per_label} per label"
    except FeaturepipeError:
        return metric


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
        "selection": (mt.get("selection") or {}).get("by", "validation split"),
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
    search = [x for x in (mt.get("search") or []) if isinstance(x, dict) and isinstance(x.get("params"), dict)]
    configs = {json.dumps({k: v for k, v in x["params"].items() if k not in _plots.DERIVED_PARAMS}, sort_keys=True,
                          default=str) for x in search}
    sec["n_search"] = len(configs)
    sec["search_metric"] = _search_metric(str(mt.get("metric")), task)
    sec["plot_search"] = plots.get(
        f"{key}-search", lambda p: _plots.search_curve(p, search, sec["search_metric"], classes,
                                                        "CV" if "CV" in str(sec["selection"]) else "val")
    ) if len(configs) > 1 else None
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


def model_sections(
    boards: list[dict[str, Any]], runs: list[_data.ModelRun], plots: _Plots, thumbs: _data.Thumbnails,
    hashes: dict[str, str],
) -> list[dict[str, Any]]:
    """Per-model sections in leaderboard order."""
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

    return models
