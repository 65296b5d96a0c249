"""Embedding engine: every image through the frozen backbone once, into a resumable HDF5 cache."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import featpipe
from featpipe import cache as fcache
from featpipe.backbones import Backbone, BackboneSpec, load_backbone
from featpipe.backbones._base import config_hash
from featpipe.data.manifest import Manifest
from featpipe.errors import CacheError, FeaturepipeError, ImageError
from featpipe.images import image_from_array, load_image

FEATURE_DTYPES = ("float32", "float16")


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeaturepipeError("--device cuda was asked for but no CUDA GPU is available")
    return device


def default_batch_size(device: str) -> int:
    # On CPU small channels_last batches are fastest (cache-friendly); GPUs want big batches.
    return 64 if device.startswith("cuda") else 8


def default_workers(device: str) -> int:
    """Decode workers. On CPU the forward pass already uses every core and decoding is a small
    share of the work, so few workers (none on 2 cores, where one measured ~20% slower); a GPU
    is fed by as many as there are cores, up to 8."""
    cores = os.cpu_count() or 2
    if device.startswith("cuda"):
        return min(8, cores)
    return 0 if cores <= 2 else min(4, cores // 4)


def library_versions() -> dict[str, str]:
    import h5py
    import timm

    out = {
        "featpipe": featpipe.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
    }
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


# --------------------------------------------------------------------------------------- reading


@dataclass
class _Item:
    row: int
    tensor: torch.Tensor
    status: int
    content_hash: str
    size: int
    mtime_ns: int
    error: str


def _read_source(path: str, array: np.ndarray | None) -> tuple[bytes | np.ndarray, str, int, int]:
    """Raw content of one image, its sha1, size and mtime (arrays: the row itself)."""
    if array is not None and "#" in path:
        idx = int(path.rsplit("#", 1)[1])
        arr = np.ascontiguousarray(array[idx])
        return arr, hashlib.sha1(arr.tobytes()).hexdigest(), arr.nbytes, 0
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as e:
        raise ImageError(f"cannot read file ({e.strerror})") from None
    return data, hashlib.sha1(data).hexdigest(), st.st_size, st.st_mtime_ns


class _ImageRows(Dataset):
    """Decodes and preprocesses the given rows; a bad image becomes a failed item, never an exception."""

    def __init__(self, paths: Sequence[str], rows: np.ndarray, array: np.ndarray | None, backbone: Backbone):
        self.paths = paths
        self.rows = rows
        self.array = array
        self.preprocess = backbone.preprocess
        self.shape = tuple(backbone.preprocessing["input_size"])
        # big JPEGs are decoded at a reduced scale that still covers the resize target
        crop = float(backbone.preprocessing.get("crop_pct", 1.0)) or 1.0
        self.draft_size = int(np.ceil(max(self.shape[1:]) / crop))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> _Item:
        row = int(self.rows[k])
        chash, size, mtime = "", 0, 0
        try:
            data, chash, size, mtime = _read_source(self.paths[row], self.array)
            img = image_from_array(data) if isinstance(data, np.ndarray) else load_image(data, target_size=self.draft_size)
            x = self.preprocess(img)
            return _Item(row, x, fcache.OK, chash, size, mtime, "")
        except ImageError as e:
            reason = str(e)
        except Exception as e:  # a decoder bug on one image must not end a long run
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:190]
        return _Item(row, torch.zeros(self.shape), fcache.FAILED, chash, size, mtime, reason)


def _collate(items: list[_Item]) -> list[_Item]:
    return items


@dataclass
class Batch:
    rows: np.ndarray
    features: np.ndarray
    status: np.ndarray
    hashes: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    errors: list[str]


def run_backbone(
    backbone: Backbone,
    paths: Sequence[str],
    rows: np.ndarray,
    *,
    array: np.ndarray | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> Iterator[Batch]:
    """Yield features for ``rows`` of ``paths`` batch by batch (failed images: zero rows)."""
    bs = batch_size or default_batch_size(backbone.device)
    workers = default_workers(backbone.device) if num_workers is None else num_workers
    ds = _ImageRows(paths, rows, array, backbone)
    loader = DataLoader(
        ds,
        batch_size=bs,
        num_workers=workers if len(rows) > bs else 0,
        collate_fn=_collate,
        pin_memory=backbone.device.startswith("cuda"),
        persistent_workers=False,
    )
    for items in loader:
        good = [it for it in items if it.status == fcache.OK]
        feats = np.zeros((len(items), backbone.feature_dim), dtype=np.float32)
        if good:
            out = backbone.forward(torch.stack([it.tensor for it in good]))
            pos = [i for i, it in enumerate(items) if it.status == fcache.OK]
            feats[pos] = out
        yield Batch(
            rows=np.array([it.row for it in items], dtype=np.int64),
            features=feats,
            status=np.array([it.status for it in items], dtype=np.int8),
            hashes=[it.content_hash for it in items],
            sizes=np.array([it.size for it in items], dtype=np.int64),
            mtimes=np.array([it.mtime_ns for it in items], dtype=np.int64),
            errors=[it.error for it in items],
        )


# --------------------------------------------------------------------------------------- caching


@dataclass
class EmbedResult:
    path: Path
    key: str
    n_rows: int
    n_computed: int
    n_reused: int
    n_failed: int
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0


def features_key(backbone: Backbone, feature_dtype: str) -> tuple[str, dict[str, Any]]:
    config = {
        **backbone.config(),
        "decode": "pil-rgb-exif-jpegdraft",
        "feature_dtype": feature_dtype,
        "format_version": fcache.FORMAT_VERSION,
    }
    return config_hash(config), config


def cache_path_for(manifest: Manifest, spec: BackboneSpec, key: str, cache_dir: str | Path) -> Path:
    """``<dataset>__<backbone tag>__<hash of features key, dataset source and featpipe's split>.h5``."""
    split = manifest.split_identity()
    file_key = config_hash({"features": key, "dataset": manifest.source, **({"split": split} if split else {})})
    return Path(cache_dir) / fcache.cache_filename(manifest.name, spec.tag(), file_key)


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _same_layout(f: Any, manifest: Manifest) -> bool:
    ids = f["ids"].asstr()[...]
    if len(ids) != len(manifest) or list(ids) != manifest.ids:
        return False
    if list(f["split"].asstr()[...]) != manifest.splits or list(f["paths"].asstr()[...]) != manifest.paths:
        return False
    old = f["labels"][...]
    return old.shape == manifest.labels.shape and bool(np.array_equal(old, manifest.labels))


def _still_valid(state: fcache.RowState, path: str, array: np.ndarray | None) -> tuple[bool, int]:
    """Whether a cached row still matches the image on disk; also returns its current mtime."""
    if array is not None and "#" in path:
        data, chash, _, _ = _read_source(path, array)
        return chash == state.content_hash, 0
    try:
        st = os.stat(path)
    except OSError:
        return False, 0
    if st.st_size == state.size and st.st_mtime_ns == state.mtime_ns:
        return True, st.st_mtime_ns
    try:
        _, chash, _, _ = _read_source(path, None)
    except ImageError:
        return False, 0
    return chash == state.content_hash, st.st_mtime_ns


def _prepare(
    path: Path, manifest: Manifest, key: str, attrs: dict[str, Any], dim: int, feature_dtype: str,
    retry_failed: bool = False,
) -> tuple[np.ndarray, int]:
    """Make ``path`` a cache laid out for ``manifest``, keeping every still-valid row.

    A failed row is retried when its bytes changed, when they were never read (an I/O failure, which
    may be transient: the content hash is empty), or always with ``retry_failed``.
    Returns the rows still to embed and the number of rows reused.
    """
    for stale in path.parent.glob(path.name + ".tmp*"):
        stale.unlink()  # left by a run killed while writing a new layout
    n = len(manifest)
    new = dict(
        n=n, dim=dim, feature_dtype=feature_dtype, ids=manifest.ids, paths=manifest.paths,
        splits=manifest.splits, labels=manifest.labels, labeled=manifest.labeled, attrs=attrs,
    )
    if not path.exists():
        fcache.create_cache_file(path, **new)
        return np.arange(n), 0

    old_attrs, states, f = fcache.read_row_states(path)
    try:
        if old_attrs.get("key") != key:
            diff = _config_diff(old_attrs.get("config", {}), attrs["config"])
            raise CacheError(
                f"cache {path.name} was built with another backbone config ({'; '.join(diff[:3]) or 'key'}); "
                "it is never reused: pass --force to rebuild it, or use another --cache-dir"
            )
        old_src = old_attrs.get("dataset", {}).get("source")
        if old_src != manifest.source:
            raise CacheError(
                f"cache {path.name} holds dataset {old_src!r}, not {manifest.source!r}; "
                "pass --force to overwrite it or use another cache file"
            )
        keep = np.zeros(n, dtype=bool)
        mtimes = np.zeros(n, dtype=np.int64)
        for i, (img_id, p) in enumerate(zip(manifest.ids, manifest.paths, strict=True)):
            st = states.get(img_id)
            if st is None or st.status == fcache.PENDING:
                continue
            if st.status == fcache.FAILED and (retry_failed or not st.content_hash):
                continue
            keep[i], mtimes[i] = _still_valid(st, p, manifest.array)
        if _same_layout(f, manifest):
            f.close()
            w = fcache.CacheWriter(path)
            try:
                changed = np.flatnonzero(~keep & (w.f["status"][...] != fcache.PENDING))
                if len(changed):  # image bytes changed: those rows go back to pending
                    w.f["status"][changed] = fcache.PENDING
                touched = np.flatnonzero(keep & (mtimes != w.f["mtime_ns"][...]))
                if len(touched):  # same bytes, new mtime: remember it to skip re-hashing next time
                    w.f["mtime_ns"][touched] = mtimes[touched]
                w.set_attrs(**{**attrs, "completed": False})
            finally:
                w.close()
            return np.flatnonzero(~keep), int(keep.sum())
        # new layout (images added / removed / relabelled): copy valid rows into a fresh file
        old_index = {img_id: j for j, img_id in enumerate(f["ids"].asstr()[...])}
        src = np.array([old_index[i] for i in np.array(manifest.ids)[keep]], dtype=np.int64)
        order = np.argsort(src)
        carry: dict[str, np.ndarray] = {}
        for name in ("features", "content_hash", "size", "mtime_ns", "error", "status"):
            ds = f[name]
            col = np.zeros((n, *ds.shape[1:]), dtype=ds.dtype)
            if len(src):
                vals = ds[src[order]]
                col[np.flatnonzero(keep)[order]] = vals
            carry[name] = col
        carry["mtime_ns"][keep] = mtimes[keep]
    finally:
        if f.id.valid:
            f.close()
    fcache.create_cache_file(path, **new, carry=carry)
    return np.flatnonzero(~keep), int(keep.sum())


def embed_dataset(
    manifest: Manifest,
    spec: BackboneSpec,
    *,
    cache_dir: str | Path = "cache",
    cache_file: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    feature_dtype: str = "float32",
    force: bool = False,
    progress: bool = True,
    write_every: int = 256,
    seed: int = 0,
    retry_failed: bool = False,
) -> EmbedResult:
    """Embed every image of ``manifest`` not yet in its cache; return what was done.

    Failed rows are retried when they could succeed now (I/O failures, changed bytes); with
    ``retry_failed`` every failed row is.
    """
    if feature_dtype not in FEATURE_DTYPES:
        raise FeaturepipeError(f"unknown feature dtype {feature_dtype!r}; expected float32 or float16")
    if len(manifest) == 0:
        raise FeaturepipeError(f"dataset {manifest.name!r} has no images")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    dev = resolve_device(device)
    backbone = load_backbone(spec, dev)
    key, config = features_key(backbone, feature_dtype)
    path = Path(cache_file) if cache_file else cache_path_for(manifest, spec, key, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {
        "format": "featpipe-features",
        "format_version": fcache.FORMAT_VERSION,
        "key": key,
        "config": config,
        "backbone": spec.to_dict(),
        "dataset": manifest.info(),
        "task": manifest.task,
        "classes": list(manifest.classes),
        "seed": seed,
        "split_seed": -1 if manifest.split_seed is None else manifest.split_seed,
        "versions": library_versions(),
        "completed": False,
    }
    with fcache.write_lock(path):
        if force and path.exists():
            path.unlink()
        legacy = Path(cache_dir) / fcache.cache_filename(
            manifest.name, spec.tag(), config_hash({"features": key, "dataset": manifest.source}))
        if not cache_file and not force and not path.exists() and legacy != path and legacy.exists():
            os.replace(legacy, path)  # named before the split was part of the name: keep its features
        todo, reused = _prepare(path, manifest, key, attrs, backbone.feature_dim, feature_dtype, retry_failed)
        t_embed = time.perf_counter()
        writer = fcache.CacheWriter(path)
        try:
            _embed_rows(writer, backbone, manifest, todo, batch_size, num_workers, progress, write_every)
            status = writer.f["status"][...]
            errors = writer.f["error"][...]
            seconds = time.perf_counter() - t_embed
            prev = fcache.read_attrs(writer.f).get("timings", {})
            failed = np.flatnonzero(status == fcache.FAILED)
            writer.set_attrs(
                completed=True,
                n_failed=len(failed),
                timings={
                    "embed_seconds_last_run": seconds,
                    "embed_seconds_total": float(prev.get("embed_seconds_total", 0.0)) + seconds,
                    "images_computed_last_run": len(todo),
                    "images_per_second_last_run": len(todo) / seconds if seconds > 0 else 0.0,
                    "device": dev,
                    "batch_size": batch_size or default_batch_size(dev),
                    "host": platform.node(),
                },
            )
        finally:
            writer.close()
    failures = [(manifest.ids[i], errors[i].decode(errors="replace")) for i in failed]
    return EmbedResult(
        path=path, key=key, n_rows=len(manifest), n_computed=len(todo), n_reused=reused,
        n_failed=len(failed), seconds=time.perf_counter() - t_start, failures=failures,
    )


def _embed_rows(
    writer: fcache.CacheWriter,
    backbone: Backbone,
    manifest: Manifest,
    todo: np.ndarray,
    batch_size: int | None,
    num_workers: int | None,
    progress: bool,
    write_every: int,
) -> None:
    if len(todo) == 0:
        return
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="img", desc=f"embed {backbone.spec.tag()}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    pending: list[Batch] = []
    n_pending = 0
    last_write = time.monotonic()

    def flush() -> None:
        nonlocal pending, n_pending, last_write
        if not pending:
            return
        writer.write_rows(
            np.concatenate([b.rows for b in pending]),
            np.concatenate([b.features for b in pending]),
            np.concatenate([b.status for b in pending]),
            [h for b in pending for h in b.hashes],
            np.concatenate([b.sizes for b in pending]),
            np.concatenate([b.mtimes for b in pending]),
            [e for b in pending for e in b.errors],
        )
        pending, n_pending, last_write = [], 0, time.monotonic()

    try:
        for batch in run_backbone(backbone, manifest.paths, todo, array=manifest.array,
                                  batch_size=batch_size, num_workers=num_workers):
            pending.append(batch)
            n_pending += len(batch.rows)
            bar.update(len(batch.rows))
            if n_pending >= write_every or time.monotonic() - last_write > 10:
                flush()
        flush()
    finally:
        bar.close()


# ------------------------------------------------------------------------- embedding loose images


@functools.lru_cache(maxsize=4)
def _cached_backbone(spec_json: str, device: str) -> Backbone:
    return load_backbone(BackboneSpec.from_dict(json.loads(spec_json)), device)


def embed_paths(
    spec: BackboneSpec | dict[str, Any],
    paths: Sequence[str | Path],
    *,
    batch_size: int | None = None,
    num_workers: int | None = 0,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Features for loose image files (no cache): ``(features, ok, errors)``."""
    spec_dict = spec.to_dict() if isinstance(spec, BackboneSpec) else dict(spec)
    backbone = _cached_backbone(json.dumps(spec_dict, sort_keys=True), resolve_device(device))
    str_paths = [str(p) for p in paths]
    feats = np.zeros((len(str_paths), backbone.feature_dim), dtype=np.float32)
    ok = np.zeros(len(str_paths), dtype=bool)
    errors: list[str | None] = [None] * len(str_paths)
    for b in run_backbone(backbone, str_paths, np.arange(len(str_paths)), batch_size=batch_size,
                          num_workers=num_workers):
        feats[b.rows] = b.features
        for r, s, e in zip(b.rows, b.status, b.errors, strict=True):
            ok[r] = s == fcache.OK
            errors[r] = None if s == fcache.OK else e
    return feats, ok, errors


_IDENTITY_FIELDS = ("name", "kind", "arch", "weights", "weights_id", "layer", "image_size")


def backbone_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What makes two backbone specs the same network: weights, layer, size (not precision; the seed
    only for random-init weights, where it is in ``weights_id``)."""
    return {k: spec.get(k) for k in _IDENTITY_FIELDS}


def find_cache(
    cache_dir: str | Path, manifest: Manifest, spec: BackboneSpec, *, precision: str = "auto"
) -> Path | None:
    """The cache in ``cache_dir`` for this dataset (source, split seed and fractions) and backbone identity.

    One such cache is used whatever precision made it; among several, the one with ``spec.precision``
    (what ``precision="auto"`` resolved to on this machine). An explicit ``precision`` only accepts that
    one. Several left: :class:`CacheError` listing them. No model is built.
    """
    want = backbone_identity(spec.to_dict())
    split = manifest.split_identity() or {}
    found: list[tuple[Path, str]] = []
    for p in sorted(Path(cache_dir).glob("*.h5")):
        try:
            with fcache._open_h5(p, "r") as f:
                a = fcache.read_attrs(f)
        except CacheError:
            continue
        ds = a.get("dataset", {})
        if (backbone_identity(a.get("backbone", {})) != want or ds.get("source") != manifest.source
                or {k: ds.get(k) for k in split} != split):
            continue
        found.append((p, str(a.get("backbone", {}).get("precision"))))
    if precision != "auto":
        found = [(p, prec) for p, prec in found if prec == spec.precision]
    if len(found) > 1:
        found = [(p, prec) for p, prec in found if prec == spec.precision] or found
    if len(found) > 1:
        raise CacheError(
            f"several caches of this dataset and backbone in {cache_dir}: "
            + ", ".join(f"{p.name} ({prec})" for p, prec in found)
            + "; pass --precision to pick one, or --cache FILE"
        )
    return found[0][0] if found else None
