"""Collect what a report shows: feature caches, fit-head runs, fine-tune histories, thumbnails."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.errors import CacheError, FeaturepipeError
from featpipe.features.cache import FeatureCache, slug
from featpipe.runs import run_problem


@dataclass
class ModelRun:
    """One ``DIR/<run>/<head>/`` folder written by ``featpipe fit-head``."""

    dir: Path
    run: str
    head: str
    metrics: dict[str, Any]
    has_predictions: bool
    slug: str
    fingerprint: str

    def predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.dir / "predictions.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


@dataclass
class History:
    """A fine-tune ``history.json``: ``{"epochs": [{"epoch", "train_loss", "val_loss", ...}]}``."""

    path: Path
    name: str
    epochs: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


def file_digest(*paths: Path) -> str:
    """Cheap identity of files (size + mtime + name): decides whether a plot must be redrawn."""
    h = hashlib.sha1()
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{p}\0missing\0".encode())
    return h.hexdigest()[:10]


def safe_slug(text: str) -> str:
    return slug(text, max_len=80, default="x")


def find_cache_files(cache_dir: str | Path | None, caches: list[str | Path] | None) -> list[Path]:
    """Cache files from a folder (``*.h5``) plus explicitly given ones, de-duplicated, sorted."""
    found: dict[str, Path] = {}
    if cache_dir is not None:
        d = Path(cache_dir)
        if not d.is_dir():
            raise FeaturepipeError(f"cache folder not found: {d}")
        for p in sorted(d.glob("*.h5")):
            found[str(p.resolve())] = p
    for c in caches or []:
        p = Path(c)
        if not p.exists():
            raise CacheError(f"cache file not found: {p}")
        found[str(p.resolve())] = p
    return sorted(found.values(), key=lambda p: p.name)


def open_caches(paths: list[Path]) -> tuple[list[FeatureCache], list[tuple[str, str]]]:
    """Open every complete cache; incomplete or unreadable ones are listed with their reason."""
    ok, bad = [], []
    for p in paths:
        try:
            ok.append(FeatureCache.open(p))
        except CacheError as e:
            bad.append((p.name, str(e)))
    return ok, bad


def _clean(o: Any) -> Any:
    """JSON ``null`` stays None; NaN floats (never in valid JSON, but be lenient) become None."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    return o


@dataclass
class CrossFit:
    """A finished cross-fit (``featpipe finetune --cross-fit K``): its record and out-of-fold probabilities."""

    dir: Path
    record: dict[str, Any]

    def load(self) -> dict[str, np.ndarray]:
        from featpipe.finetune import OOF_FILE

        with np.load(self.dir / OOF_FILE, allow_pickle=False) as z:
            return {k: z[k] for k in ("paths", "labels", "labeled", "proba")}

    def digest(self) -> str:
        from featpipe.finetune import OOF_FILE, RECORD_FILE

        return file_digest(self.dir / RECORD_FILE, self.dir / OOF_FILE)


def find_cross_fits(models_dir: str | Path | None) -> tuple[list[CrossFit], list[tuple[str, str]]]:
    """Every finished cross-fit under ``models_dir``; unreadable ones with a reason."""
    from featpipe.finetune import OOF_FILE, RECORD_FILE

    if models_dir is None:
        return [], []
    d = Path(models_dir)
    found, bad = [], []
    for rp in sorted(d.rglob(RECORD_FILE)):
        rel = str(rp.parent.relative_to(d)) or rp.parent.name
        try:
            rec = json.loads(rp.read_text())
            if not isinstance(rec, dict) or rec.get("kind") != "cross-fit" or not (rp.parent / OOF_FILE).is_file():
                raise ValueError(f"not a finished cross-fit (no {OOF_FILE})")
        except (OSError, ValueError) as e:
            bad.append((rel, f"unreadable {RECORD_FILE} ({str(e)[:100]})"))
            continue
        found.append(CrossFit(rp.parent, rec))
    return found, bad


def find_model_runs(models_dir: str | Path | None) -> tuple[list[ModelRun], list[tuple[str, str]]]:
    """Every ``metrics.json`` under ``models_dir`` (``<run>/<head>/``); unreadable ones with a reason."""
    if models_dir is None:
        return [], []
    d = Path(models_dir)
    if not d.is_dir():
        raise FeaturepipeError(f"models folder not found: {d}")
    runs, bad = [], []
    for mp in sorted(d.rglob("metrics.json")):
        rel = mp.parent.relative_to(d)
        try:
            m = _clean(json.loads(mp.read_text()))
            if not isinstance(m, dict) or "scores" not in m or "task" not in m:
                raise ValueError("not a fit-head metrics file")
        except (OSError, ValueError) as e:
            bad.append((str(rel), f"unreadable metrics.json ({str(e)[:100]})"))
            continue
        problem = run_problem(mp.parent, m)
        if problem:  # a partial or mixed run is never reported as one
            bad.append((str(rel), problem))
            continue
        head = str(m.get("head") or mp.parent.name)
        run = str(m.get("run") or mp.parent.parent.name)
        pred = mp.parent / "predictions.npz"
        runs.append(
            ModelRun(
                dir=mp.parent,
                run=run,
                head=head,
                metrics=m,
                has_predictions=pred.exists(),
                slug=safe_slug(f"{run}--{head}"),
                fingerprint=file_digest(mp, pred),
            )
        )
    return runs, bad


def find_histories(models_dir: str | Path | None) -> tuple[list[History], list[tuple[str, str]]]:
    if models_dir is None:
        return [], []
    d = Path(models_dir)
    out, bad = [], []
    for hp in sorted(d.rglob("history.json")):
        rel = str(hp.parent.relative_to(d)) or hp.parent.name
        try:
            data = json.loads(hp.read_text())
            epochs = data["epochs"] if isinstance(data, dict) else None
            if not isinstance(epochs, list) or not all(isinstance(e, dict) for e in epochs):
                raise ValueError('expected {"epochs": [{"epoch": 1, "train_loss": ...}, ...]}')
        except (OSError, ValueError, KeyError) as e:
            bad.append((rel, f"unreadable history.json ({str(e)[:100]})"))
            continue
        extra = {k: v for k, v in data.items() if k != "epochs"}
        out.append(History(hp, rel, [_clean(e) for e in epochs], extra))
    return out, bad


class Thumbnails:
    """Small JPEG thumbnails in ``out/thumbs/<content hash>.jpg``, made once and reused across runs.

    Images are decoded one at a time (never all in memory); a file that cannot be read yields None.
    """

    def __init__(self, out: Path, size: int = 96) -> None:
        self.dir = out / "thumbs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.used: set[str] = set()
        self.made = 0
        self._memo: dict[tuple[str, str], str | None] = {}
        self._arrays: dict[str, np.ndarray | None] = {}

    def _key(self, path: str, content_hash: str | None) -> str:
        if content_hash:
            return hashlib.sha1(f"{content_hash}\0{self.size}".encode()).hexdigest()[:16]
        p = Path(path.split("#")[0])
        try:
            st = p.stat()
            ident = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            ident = path
        return hashlib.sha1(f"{ident}\0{self.size}".encode()).hexdigest()[:16]

    def _array_image(self, path: str):
        from featpipe.data.images import image_from_array

        file, _, idx = path.rpartition("#")
        if file not in self._arrays:
            try:
                with np.load(file, allow_pickle=False) as z:
                    arrs = [z[k] for k in z.files if z[k].ndim in (3, 4)]
                self._arrays[file] = arrs[0] if arrs else None
            except (OSError, ValueError):
                self._arrays[file] = None
        arr = self._arrays[file]
        if arr is None:
            raise OSError("array not found")
        return image_from_array(arr[int(idx)])

    def open_image(self, path: str, target_size: int | None = None):
        """The RGB image of a cache row's path (a file, or ``<file.npz>#<row>``); raises when unreadable."""
        if "#" in path and path.split("#")[0].endswith(".npz"):
            return self._array_image(path)
        from featpipe.data.images import load_image

        return load_image(path, target_size=target_size)

    def get(self, path: str, content_hash: str | None = None) -> str | None:
        """Relative URL (``thumbs/<key>.jpg``) of the thumbnail of ``path``, or None if unreadable."""
        memo = (str(path), content_hash or "")
        if memo in self._memo:
            return self._memo[memo]
        key = self._key(str(path), content_hash)
        name = f"{key}.jpg"
        target = self.dir / name
        url: str | None = f"thumbs/{name}"
        if not target.exists():
            try:
                img = self.open_image(str(path), target_size=self.size)
                img.thumbnail((self.size, self.size))
                tmp = target.with_suffix(".tmp.jpg")
                img.save(tmp, "JPEG", quality=85)
                tmp.replace(target)
                self.made += 1
            except (FeaturepipeError, OSError, ValueError, IndexError):
                url = None
        if url:
            self.used.add(name)
        self._memo[memo] = url
        return url
