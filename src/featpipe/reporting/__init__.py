"""`featpipe report`: one self-contained folder comparing every cached backbone x fitted head.

``build_report`` writes ``out/index.html`` (opens offline; PNG plots in ``out/plots/``, thumbnails in
``out/thumbs/``), ``out/leaderboard.csv``, ``out/label_issues.csv`` and ``out/summary.md``. Re-running updates it: plots whose
inputs did not change and thumbnails (keyed by image content hash) are reused, stale plots removed,
and label-error / duplicate analyses are cached per feature cache in ``out/.analysis/``.
One module per section: _dataset (with _quality: _label_issues, _duplicates), _leaderboard, _models,
_history, _facts; _outputs writes the files.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featpipe.errors import FeaturepipeError
from featpipe.folders import writable_folder
from featpipe.reporting._outputs import (
    LABEL_ISSUES_CSV,
    _render,
    _summary_md,
    _write_csv,
    count_label_issues,
    write_label_issues,
)


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
    ``analyses=False`` skips the label-error and duplicate analyses (and removes an old
    ``label_issues.csv``).
    """
    # the sections draw with matplotlib: loaded here, so `featpipe.reporting.config` (and the CLI) stay light
    from featpipe.reporting import _analysis, _data, _history, _leaderboard, _models
    from featpipe.reporting._common import _dataset_key, _Plots
    from featpipe.reporting._dataset import _dataset_section
    from featpipe.reporting._facts import _run_facts

    if human_baseline is not None:
        hb = _analysis.finite(human_baseline)
        if hb is None:
            raise FeaturepipeError(f"human baseline must be a number, got {human_baseline!r}")
        human_baseline = hb
    cache_files = _data.find_cache_files(cache_dir, list(caches or []))
    runs, bad_runs = _data.find_model_runs(models_dir)
    histories, bad_hist = _data.find_histories(models_dir)
    cross_fits, bad_cross = _data.find_cross_fits(models_dir)
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
    out = writable_folder(out, "report")
    opened, bad_caches = _data.open_caches(cache_files)
    plots = _Plots(out)
    thumbs = _data.Thumbnails(out)
    hashes: dict[str, str] = {}
    for c in opened:
        for p, h, ok in zip(c.paths, c.content_hash, c.ok, strict=True):
            if ok and h:
                hashes[str(p)] = str(h)

    boards, all_rows = _leaderboard.leaderboards(runs, opened, plots, human_baseline)
    # the runs of each dataset, best on its leaderboard first: the best one checks the labels
    run_of = {r.slug: r for r in runs}
    ranked: dict[str, list[Any]] = defaultdict(list)
    for b in boards:
        for row in b["rows"]:
            r = run_of[row["slug"]]
            ranked[_dataset_key((r.metrics.get("cache") or {}).get("dataset") or {})].append(r)

    # datasets (one section per dataset, several caches when several backbones embedded it)
    by_ds: dict[str, list[Any]] = defaultdict(list)
    for c in opened:
        by_ds[_dataset_key(c.dataset)].append(c)
    datasets = [_dataset_section(cs, plots, thumbs, hashes, out, analyses, ranked.get(k, []), cross_fits)
                for k, cs in by_ds.items()]
    models = _models.model_sections(boards, runs, plots, thumbs, hashes)
    hist = _history.history_sections(histories, plots)

    problems = bad_caches + bad_runs + bad_hist + bad_cross
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
    issues = out / LABEL_ISSUES_CSV
    if analyses:
        write_label_issues(issues, [r for d in datasets if d["quality"] for r in d["quality"]["csv_rows"]])
    else:
        issues.unlink(missing_ok=True)  # not analysed this time: an old list would mislead
    (out / "summary.md").write_text(_summary_md(ctx) + "\n")
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(index)
    plots.prune()
    return index


__all__ = ["LABEL_ISSUES_CSV", "build_report", "count_label_issues"]
