"""Embedding engine: every image through the frozen backbone once, into a resumable HDF5 cache."""

from __future__ import annotations

import functools
import json
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

from featpipe import cache as fcache
from featpipe.backbones import Backbone, BackboneSpec, load_backbone
from featpipe.data.manifest import Manifest
from featpipe.errors import FeaturepipeError, ImageError
from featpipe.hardware import available_cpus
from featpipe.images import image_from_array, load_image, read_source
from featpipe.versions import library_versions

FEATURE_DTYPES = ("float32", "float16")
ENGINES = ("local", "ray")


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
    cores = available_cpus()
    if device.startswith("cuda"):
        return min(8, cores)
    return 0 if cores <= 2 else min(4, cores // 4)


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
            data, chash, size, mtime = read_source(self.paths[row], self.array)
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
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> EmbedResult:
    """Embed every image of ``manifest`` not yet in its cache; return what was done.

    Failed rows are retried when they could succeed now (I/O failures, changed bytes); with
    ``retry_failed`` every failed row is. ``engine="ray"`` computes the rows on Ray Data
    (``featpipe.embed_ray``); the cache is the same.
    """
    if engine not in ENGINES:
        raise FeaturepipeError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "ray":
        from featpipe.embed_ray import require_ray

        require_ray()
    if feature_dtype not in FEATURE_DTYPES:
        raise FeaturepipeError(f"unknown feature dtype {feature_dtype!r}; expected float32 or float16")
    if len(manifest) == 0:
        raise FeaturepipeError(f"dataset {manifest.name!r} has no images")
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    dev = resolve_device(device) if engine == "local" else "cpu"  # Ray: the driver only reads the config
    backbone = load_backbone(spec, dev)
    key, config = fcache.features_key(backbone, feature_dtype)
    path = Path(cache_file) if cache_file else fcache.cache_path_for(manifest, spec, key, cache_dir)
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
        if not cache_file and not force:
            fcache.start_from_sibling(path, manifest, spec, key)
        todo, reused = fcache.prepare_cache(path, manifest, key, attrs, backbone.feature_dim, feature_dtype,
                                            retry_failed)
        t_embed = time.perf_counter()
        writer = fcache.CacheWriter(path)
        try:
            if engine == "ray":
                from featpipe.embed_ray import embed_rows_ray

                dev = embed_rows_ray(writer, backbone, manifest, todo, device=device, address=ray_address,
                                     actors=ray_actors, batch_size=batch_size, progress=progress,
                                     write_every=write_every)
            else:
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
                    "engine": engine,
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
    if spec_dict.get("kind") == "fused":  # several backbones (featpipe.fuse)
        from featpipe.fuse import embed_fused_paths

        return embed_fused_paths(spec_dict, paths, batch_size=batch_size, num_workers=num_workers, device=device)
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
