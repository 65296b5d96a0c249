"""Next to the leaderboard: the chance level, paired differences against the top run, calibration and
per-class scores of the top runs, all from the test rows each run scored (its predictions.npz)."""

from __future__ import annotations

from typing import Any

import numpy as np

from featpipe.errors import FeaturepipeError
from featpipe.heads.metrics import best_constant, calibration, paired_bootstrap, small_sample
from featpipe.reporting import _analysis, _data

TOP_SIDE_BY_SIDE = 4  # runs whose per-class scores are shown side by side
TOP_CALIBRATION = 6  # runs drawn in the reliability diagram


def scored_rows(run: _data.ModelRun, split: str = "test") -> dict[str, np.ndarray] | None:
    """``ids, y, proba, pred`` of the rows of ``split`` that ``run`` scored (nan rows left out)."""
    if not run.has_predictions:
        return None
    try:
        P = run.predictions()
    except (OSError, ValueError, KeyError):
        return None
    if not {"ids", "split", "y_true", "proba", "pred"} <= set(P):
        return None
    rows = np.flatnonzero(P["split"] == split)
    proba = P["proba"][rows].astype(float)
    if proba.ndim != 2:
        return None
    ok = ~np.isnan(proba).any(1)
    rows = rows[ok]
    if len(rows) == 0:
        return None
    return {"ids": P["ids"][rows].astype(str), "y": P["y_true"][rows], "proba": P["proba"][rows].astype(float),
            "pred": P["pred"][rows]}


def chance(metric: str, task: str, classes: list[str], test: dict[str, np.ndarray] | None, cache: Any
           ) -> dict[str, Any] | None:
    """Best constant predictor of ``metric`` on the test rows (a run's, else the cache's; val without test)."""
    if test is not None:
        y, split = test["y"], "test"
    elif cache is not None:
        split = "test" if len(cache.split_indices("test")) else "val"
        y = np.asarray(cache.labels)[cache.split_indices(split)]
    else:
        return None
    try:
        c = best_constant(metric, task, y, classes)
    except FeaturepipeError:  # a metric this version's table does not define for the task: no line
        return None
    return None if c is None else {**c, "split": split}


def _aligned(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices of ``a`` and ``b`` holding the same test images (by id) with the same labels; None if the
    two runs did not score the same test set."""
    if len(a["ids"]) != len(b["ids"]) or len(set(a["ids"].tolist())) != len(a["ids"]):
        return None
    pos = {k: i for i, k in enumerate(b["ids"].tolist())}
    try:
        jb = np.array([pos[k] for k in a["ids"].tolist()], dtype=np.int64)
    except KeyError:
        return None
    ia = np.arange(len(a["ids"]))
    if not np.array_equal(np.asarray(a["y"]), np.asarray(b["y"])[jb]):
        return None
    return ia, jb


def paired_vs_top(rows: list[dict[str, Any]], tests: dict[str, dict[str, np.ndarray] | None], metric: str,
                  task: str) -> None:
    """Give every row ``diff`` (its test score minus the top row's, on the same test images) with a paired
    bootstrap 95% interval, and ``separated`` (False when the interval holds 0); the top row is row 0."""
    for r in rows:
        r.update(vs_top=None, vs_top_lo=None, vs_top_hi=None, separated=None, vs_top_note=None)
    if not rows:
        return
    top = tests.get(rows[0]["slug"])
    if top is None:
        return
    for r in rows[1:]:
        mine = tests.get(r["slug"])
        if mine is None:
            r["vs_top_note"] = "predictions.npz missing"
            continue
        al = _aligned(top, mine)
        if al is None:
            r["vs_top_note"] = "scored other test images than the top run"
            continue
        it, im = al
        try:
            d = paired_bootstrap(metric, task, top["y"][it], (mine["proba"][im], mine["pred"][im]),
                                 (top["proba"][it], top["pred"][it]), seed=0)
        except (FeaturepipeError, ValueError, IndexError):  # unknown metric or malformed arrays
            d = None
        if d is None:
            r["vs_top_note"] = "undefined on these rows"
            continue
        r.update(vs_top=d["diff"], vs_top_lo=d["ci"][0], vs_top_hi=d["ci"][1],
                 separated=not (d["ci"][0] <= 0.0 <= d["ci"][1]))


def not_separated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The top row and every row whose paired difference to it has an interval holding 0 (empty if none)."""
    out = [r for r in rows[1:] if r.get("separated") is False]
    return [rows[0], *out] if out else []


def calibration_rows(rows: list[dict[str, Any]], tests: dict[str, dict[str, np.ndarray] | None], task: str
                     ) -> dict[str, dict[str, Any]]:
    """Reliability bins and ECE of every row's test probabilities, by run slug (``row["ece"]`` is set)."""
    out = {}
    for r in rows:
        t = tests.get(r["slug"])
        cal = calibration(task, t["y"], t["proba"]) if t is not None else None
        r["ece_test"] = cal["ece"] if cal else None
        if cal:
            out[r["slug"]] = cal
    return out


def per_class_key(metric: str) -> tuple[str, str]:
    """The per-class score that goes with a main metric, and its column label."""
    if metric == "roc_auc":
        return "roc_auc", "ROC AUC"
    if metric in ("average_precision", "map"):
        return "average_precision", "AP"
    if metric in ("accuracy", "balanced_accuracy"):
        return "recall", "recall (per-class accuracy)"
    return "f1", "F1"


def side_by_side(rows: list[dict[str, Any]], runs: dict[str, _data.ModelRun], metric: str) -> dict[str, Any] | None:
    """Per-class test scores of the top runs side by side (best of each class marked)."""
    top = [r for r in rows if (runs[r["slug"]].metrics.get("scores") or {}).get("test")][:TOP_SIDE_BY_SIDE]
    if len(top) < 2:
        return None
    key, label = per_class_key(metric)
    classes = [str(c) for c in runs[top[0]["slug"]].metrics.get("classes", [])]
    per = [(runs[r["slug"]].metrics["scores"]["test"].get("per_class") or {}) for r in top]
    table = []
    for c in classes:
        vals = [_analysis.finite((p.get(c) or {}).get(key)) for p in per]
        best = max((v for v in vals if v is not None), default=None)
        support = next(((p.get(c) or {}).get("support") for p in per if p.get(c)), None)
        table.append({"cls": c, "support": support, "cells": [
            {"v": v, "best": v is not None and best is not None and v >= best - 1e-12} for v in vals]})
    return {"key": key, "label": label, "runs": top, "table": table}


def small_test(rows: list[dict[str, Any]], runs: dict[str, _data.ModelRun]) -> str | None:
    """Why the board's test set is too small to trust (set on each row as ``small``), or None."""
    first = None
    for r in rows:
        mt = runs[r["slug"]].metrics
        r["small_test"] = small_sample((mt.get("scores") or {}).get("test"), str(mt.get("task")))
        first = first or r["small_test"]
    return first

