"""Data-quality section of one dataset: label issues, exact duplicates, near-copies across splits.

The labels are checked by the best run on the leaderboard on each backbone (up to three backbones; a row
is flagged when every check flags it), or without fitted heads by a logistic head on each cache.
Duplicates and near-copies are judged on the first check's cache. Results are cached in
``out/.analysis/`` by the cache files' identity and the checking models.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from featpipe.reporting import _data, _duplicates, _label_issues
from featpipe.reporting._common import _backbone_label

VERSION = 5  # bump when an analysis changes: cached results are then recomputed
CARDS = 24


def _probes(caches: list[Any], ranked_runs: list[Any], cross_fits: list[Any]) -> list[_label_issues.Probe]:
    """The checking models, best first: the best-ranked run on each cache, or default logistic heads; then
    every cross-fitted fine-tune of the same classes (``find_label_issues`` keeps it only when it scored
    the same images with the same labels)."""
    first = _cache_probes(caches, ranked_runs)
    if not first:  # the first check names the rows (and its cache the thumbnails): a cache is needed
        return []
    c = first[0].cache
    return first + [_label_issues.probe_from_cross_fit(x) for x in cross_fits
                    if x.record.get("task") == c.task
                    and [str(k) for k in x.record.get("classes") or []] == [str(k) for k in c.classes]]


def _cache_probes(caches: list[Any], ranked_runs: list[Any]) -> list[_label_issues.Probe]:
    by_key = {str(c.key): c for c in caches}
    probes: dict[str, _label_issues.Probe] = {}
    for rank, r in enumerate(ranked_runs, 1):
        key = str((r.metrics.get("cache") or {}).get("key"))
        c = by_key.get(key)
        if c is None or key in probes:
            continue
        p = _label_issues.probe_from_run(r.metrics, c, _backbone_label(c.backbone, Path(c.path).stem), rank)
        if p is not None:
            probes[key] = p
    if probes:
        return list(probes.values())[: _label_issues.MAX_PROBES]
    labels = {str(c.path): _backbone_label(c.backbone, Path(c.path).stem) for c in caches}
    return _label_issues.default_probes(caches, labels)[: _label_issues.MAX_PROBES]


def _analyse(c: Any, probes: list[_label_issues.Probe], thumbs: _data.Thumbnails, out: Path) -> dict[str, Any]:
    adir = out / ".analysis"
    adir.mkdir(parents=True, exist_ok=True)
    ident = json.dumps({"v": VERSION, "cache": _data.file_digest(Path(c.path)),
                        "probes": [{**p.describe(), "config": p.config,
                                    "cache": p.oof.digest() if p.oof is not None else _data.file_digest(Path(p.cache.path))}
                                   for p in probes]}, sort_keys=True, default=str)
    digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
    stem = Path(c.path).stem
    apath = adir / f"{stem}-{digest}.json"
    if apath.exists():
        try:
            return json.loads(apath.read_text())
        except ValueError:
            pass
    t0 = time.perf_counter()
    li = (_label_issues.find_label_issues(probes, seed=c.seed) if probes else
          {"skipped": "no head could be fitted to check the labels (every class needs labelled train rows)",
           "flags": [], "n_flagged": 0})
    t1 = time.perf_counter()
    exact = _duplicates.exact_duplicates(c, top=CARDS)
    cal = _duplicates.calibrate(c, thumbs.open_image, seed=c.seed)
    near = _duplicates.near_copies(c, cal["threshold"], top=CARDS) if cal.get("separable") else None
    data = {"label_issues": li, "exact": exact, "calibration": cal, "near": near,
            "seconds": {"label_issues": t1 - t0, "duplicates": time.perf_counter() - t1}}
    for old in adir.glob(f"{stem}-*.json"):
        old.unlink(missing_ok=True)
    tmp = apath.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(apath)
    return data


def quality_section(caches: list[Any], ranked_runs: list[Any], thumbs: _data.Thumbnails,
                    hashes: dict[str, str], out: Path, cross_fits: list[Any] | None = None) -> dict[str, Any]:
    """The section's context; ``csv_rows`` holds every flagged image for ``label_issues.csv``."""
    probes = _probes(caches, ranked_runs, cross_fits or [])
    c = probes[0].cache if probes and probes[0].cache is not None else caches[0]
    data = _analyse(c, probes, thumbs, out)

    def item(i: int) -> dict[str, Any]:
        p = str(c.paths[i])
        return {"url": thumbs.get(p, hashes.get(p)), "id": str(c.ids[i]), "split": str(c.splits[i])}

    li = data["label_issues"]
    issues = [{**item(f["row"]), **f} for f in li.get("flags", [])[:CARDS]]
    groups = [{**g, "items": [item(r) for r in g["rows"][:4]], "more": max(len(g["rows"]) - 4, 0)}
              for g in data["exact"]["groups"]]
    near = data["near"]
    pairs = [{**p, "a": item(p["a"]), "b": item(p["b"])} for p in (near or {}).get("pairs", [])]
    csv_rows = [{"path": str(c.paths[f["row"]]), "split": str(c.splits[f["row"]]), "given": f["given"],
                 "suggested": f["suggested"], "score": f["score"]} for f in li.get("flags", [])]
    return {
        "cache": Path(c.path).name,
        "backbone": _backbone_label(c.backbone, Path(c.path).stem),
        "li": li,
        "issues": issues,
        "exact": data["exact"],
        "groups": groups,
        "cal": data["calibration"],
        "near": near,
        "pairs": pairs,
        "seconds": data["seconds"],
        "csv_rows": csv_rows,
    }
