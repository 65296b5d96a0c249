"""Leaderboard section: one row per fitted head, ranked by validation, with chance and human lines, paired
differences against the top run, calibration and per-class scores of the top runs (from _compare)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from featpipe.errors import FeaturepipeError
from featpipe.heads.metrics import main_metric_key
from featpipe.reporting import _analysis, _compare, _data, _plots
from featpipe.reporting._common import SECONDARY, _backbone_label, _dataset_key, _Plots


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
        "test_ci_lo": _analysis.finite((test.get("main_ci") or [None, None])[0]),
        "test_ci_hi": _analysis.finite((test.get("main_ci") or [None, None])[1]),
        "selection": (mt.get("selection") or {}).get("by", "validation split"),
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


def leaderboards(
    runs: list[_data.ModelRun], opened: list[Any], plots: _Plots, human_baseline: float | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One leaderboard per (dataset, metric), rows ranked by validation; also every row flat."""
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
        runs_by = {r.slug: r for r in rs}
        tests = {r.slug: _compare.scored_rows(r) for r in rs}
        task = rows[0]["task"] if rows else "multiclass"
        classes = [str(c) for c in (rs[0].metrics.get("classes") or [])]
        cache = next((c for r in rs if (c := cache_of.get(str((r.metrics.get("cache") or {}).get("key")) + dkey))),
                     None)
        top_test = next((tests[x["slug"]] for x in rows if tests.get(x["slug"]) is not None), None)
        chance = _compare.chance(metric, str(task), classes, top_test, cache)
        ch = chance["value"] if chance else None
        for row in rows:
            row["chance"], row["human_baseline"] = ch, human_baseline
        _compare.paired_vs_top(rows, tests, metric, str(task))
        cal = _compare.calibration_rows(rows, tests, str(task))
        small = _compare.small_test(rows, runs_by)
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
        within = _compare.not_separated(rows)
        for row in rows:
            row["within_best_ci"] = row.get("separated") is False
        cal_names = {x["slug"]: n for x, n in zip(rows, names, strict=True)}
        cal_series = [(cal_names[x["slug"]], cal[x["slug"]]) for x in rows if x["slug"] in cal][
            : _compare.TOP_CALIBRATION]
        plot_cal = plots.get(
            f"{slug}-cal-{_leaderboard_fingerprint(rs, None, None)}",
            lambda p, s=cal_series: _plots.reliability(p, s),
        ) if cal_series else None
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
                "chance_uniform": chance.get("uniform") if chance else None,
                "chance_n": chance.get("n") if chance else None,
                "human": human_baseline,
                "slug": slug,
                "task": rows[0]["task"] if rows else "?",
                "within": within,
                "has_diff": any(x["vs_top"] is not None for x in rows),
                "small": small,
                "plot_calibration": plot_cal,
                "calibration_kind": next(iter(cal.values()))["kind"] if cal else None,
                "side_by_side": _compare.side_by_side(rows, runs_by, metric),
            }
        )
        all_rows += rows
    return boards, all_rows
