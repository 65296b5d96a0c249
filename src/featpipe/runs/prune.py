"""Which feature caches are still used: by a model bundle (its metrics.json) or by a pipeline file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featpipe.errors import FeaturepipeError
from featpipe.features.cache import is_locked, list_caches
from featpipe.runs import RECORD_FILE, RunRecordError, read_record


@dataclass
class PruneItem:
    """One cache file and why it is kept or removed."""

    path: Path
    keep: bool
    reason: str


def _bundle_refs(models_dirs: list[Path]) -> tuple[set[str], set[str]]:
    """(cache keys, cache file names) recorded in every metrics.json under the model folders."""
    keys, names = set(), set()
    for d in models_dirs:
        if not d.is_dir():
            raise FeaturepipeError(f"models folder not found: {d}")
        for m in d.rglob(RECORD_FILE):
            try:  # a partial run still names the cache it is re-fitted from: kept too
                cache = read_record(m.parent, verify=False).get("cache") or {}
            except RunRecordError:
                continue  # not a featpipe run record
            if cache.get("key"):
                keys.add(str(cache["key"]))
            if cache.get("path"):
                names.add(Path(cache["path"]).name)
    return keys, names


def plan_prune(cache_dir: str | Path, models_dirs: list[str | Path] = (), pipeline_backbones: set[str] | None = None
               ) -> list[PruneItem]:
    """Every cache in ``cache_dir`` with keep/remove: kept when a bundle under ``models_dirs`` was fitted on it,
    a pipeline names its backbone (``pipeline_backbones``: the backbone names the pipeline files embed; ``None``
    when no pipeline is named), or it is being written now."""
    if not models_dirs and pipeline_backbones is None:
        raise FeaturepipeError("name the --models folders and/or --pipeline files whose caches are in use; "
                               "without them every cache would count as unused")
    keys, names = _bundle_refs([Path(d) for d in models_dirs])
    backbones = pipeline_backbones or set()
    out = []
    for row in list_caches(cache_dir):
        path = Path(cache_dir) / row["file"]
        if is_locked(path):
            out.append(PruneItem(path, True, "being written"))
        elif "key" not in row:
            out.append(PruneItem(path, False, row["state"]))
        elif (row["key"] and any(k.startswith(row["key"]) for k in keys)) or path.name in names:
            out.append(PruneItem(path, True, "used by a model bundle"))
        elif row["backbone"] in backbones:
            out.append(PruneItem(path, True, "its backbone is in a pipeline"))
        else:
            out.append(PruneItem(path, False, "no bundle or pipeline uses it"))
    return out


def remove_caches(items: list[PruneItem]) -> int:
    """Delete the caches marked for removal (and their lock files); returns the bytes freed."""
    freed = 0
    for it in items:
        if it.keep or not it.path.exists():
            continue
        freed += it.path.stat().st_size
        it.path.unlink()
        lock = it.path.with_name(it.path.name + ".lock")
        if lock.exists():
            lock.unlink()
    return freed
