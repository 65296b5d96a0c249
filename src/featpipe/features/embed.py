"""Embedding engine: every image through the frozen backbone once, into a resumable HDF5 cache."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featpipe.backbones import Backbone, BackboneSpec, load_backbone
from featpipe.data.images import failure_reason, image_from_array, load_image, plain_jpeg_size, read_source
from featpipe.data.manifest import Manifest
from featpipe.errors import FeaturepipeError, FolderError, ImageError
from featpipe.features import cache as fcache
from featpipe.features.config import ENGINES, EmbedConfig
from featpipe.features.decode import DECODE_CHOICES, Packed, place_on_device, resolve_decode, uses_nvjpeg
from featpipe.folders import is_writable, make_folder
from featpipe.hardware import available_cpus, resolve_device
from featpipe.versions import library_versions

FEATURE_DTYPES = ("float32", "float16")


def default_batch_size(device: str) -> int:
    # On CPU small channels_last batches are fastest (cache-friendly); GPUs want big batches (H100, lite0,
    # 100k JPEGs: 5,105 img/s at 256 vs 4,038 at 64, fewer hand-offs from the decode processes)
    return 256 if device.startswith("cuda") else 8


def default_workers(device: str) -> int:
    """Decoders: on CPU a thread per core, decoding each batch between forward passes; a GPU is fed
    by a process per core but one (the main process drives the GPU), up to 16 (see :func:`_decoded_batches`)."""
    cores = available_cpus()
    return max(1, min(16, cores - 1)) if device.startswith("cuda") else cores


# --------------------------------------------------------------------------------------- reading


@dataclass
class Batch:
    """One batch of rows: what was read (hash, size, mtime, status, error) and each backbone's input
    (with ``--decode device``: first the decoded pixels / JPEG files the device turns into inputs)."""

    rows: np.ndarray
    status: np.ndarray
    hashes: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    errors: list[str]
    inputs: dict[Any, torch.Tensor] = field(default_factory=dict, repr=False)
    features: np.ndarray | None = None  # filled by run_backbone (one backbone)
    pixels: dict[int, Packed] = field(default_factory=dict, repr=False)  # decode size -> HWC pixels to resize
    resized: dict[Any, Packed] = field(default_factory=dict, repr=False)  # input key -> rows resized by PIL
    jpegs: Packed | None = field(default=None, repr=False)  # files for the device's JPEG decoder

    def pin_memory(self) -> Batch:
        """Page-locked inputs, for asynchronous copies to a GPU (DataLoader's pin thread calls this)."""
        self.inputs = {k: v.pin_memory() for k, v in self.inputs.items()}
        self.pixels = {k: v.pin_memory() for k, v in self.pixels.items()}
        self.resized = {k: v.pin_memory() for k, v in self.resized.items()}
        return self


@dataclass(frozen=True)
class _Cut:
    draft: int  # JPEG decode size (PIL draft) that still covers the resize
    fn: Callable[[Any], Any]  # PIL image -> uint8 HWC array (geometry) or float CHW tensor (preprocess)
    shape: tuple[int, ...]
    uint8: bool
    tensor_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # geometry on uint8 NCHW tensors


class _Decoder:
    """Reads and hashes each image once, decodes it once per distinct decode size, resizes and crops
    it once per distinct geometry (size, interpolation, crop) and hands each backbone its batch.

    Backbones with a ``geometry`` (timm ones) get uint8 (B, H, W, C) batches they normalise
    themselves; others get their own ``preprocess`` output. A bad image is a failed row (zeros),
    never an exception. ``decode`` (see :mod:`featpipe.features.decode`) moves the resize and crop,
    and with ``device-jpeg`` plain JPEGs' decoding, to the backbones' device: :meth:`decode` then
    packs pixels or files and :meth:`finish` makes the inputs there.
    """

    def __init__(self, backbones: Sequence[Backbone], paths: Sequence[str], array: np.ndarray | None,
                 decode: str = "cpu") -> None:
        self.paths = paths
        self.array = array
        self.pin = any(b.device.startswith("cuda") for b in backbones)  # page-locked: async copies to the GPU
        self.decode_on = resolve_decode(decode, backbones)
        self.device = backbones[0].device
        self.cuts: dict[Any, _Cut] = {}
        self.keys: list[Any] = []  # per backbone: the key of its input in Batch.inputs
        for b in backbones:
            pre = b.preprocessing
            shape = tuple(int(v) for v in pre["input_size"])
            crop = float(pre.get("crop_pct", 1.0)) or 1.0
            draft = int(np.ceil(max(shape[1:]) / crop))
            geometry = getattr(b, "geometry", None)
            if geometry is not None:
                geo = {k: pre.get(k) for k in ("input_size", "interpolation", "crop_pct", "crop_mode")}
                key: Any = ("uint8", json.dumps(geo, sort_keys=True))
                cut = _Cut(draft, geometry, (shape[1], shape[2], shape[0]), True, getattr(b, "tensor_geometry", None))
            else:
                key = ("float", len(self.keys))
                cut = _Cut(draft, b.preprocess, shape, False)
            self.cuts.setdefault(key, cut)
            self.keys.append(key)
        self.drafts = sorted({c.draft for c in self.cuts.values()})

    def _device_jpeg(self, data: Any) -> bool:
        """A file the device's JPEG decoder gets: plain (see plain_jpeg_size), not reduced by any draft."""
        if self.decode_on != "device-jpeg" or isinstance(data, np.ndarray):
            return False
        size = plain_jpeg_size(data)
        return size is not None and all(min(size[0] // d, size[1] // d) < 2 for d in self.drafts)

    def decode(self, rows: np.ndarray, pool: ThreadPoolExecutor | None = None, parts: int = 1,
               pin: bool | None = None) -> Batch:
        """One batch; with ``pool``, its rows are decoded there in ``parts`` slices at once.
        ``pin`` (default: when a backbone is on a GPU) page-locks the inputs."""
        n = len(rows)
        on_device = self.decode_on != "cpu"  # inputs are made on the device, in finish()
        inputs = {} if on_device else {k: np.zeros((n, *c.shape), np.uint8) if c.uint8 else torch.zeros((n, *c.shape))
                                       for k, c in self.cuts.items()}
        status = np.full(n, fcache.OK, dtype=np.int8)
        hashes, errors = [""] * n, [""] * n
        sizes, mtimes = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        # device modes: decoded pixels to resize there (images smaller than a cut's input), inputs
        # resized here (the others: fewer bytes to copy, and their resize costs less than their decode)
        pixels: dict[int, dict[int, np.ndarray]] = {s: {} for s in [-1, *self.drafts]}
        resized: dict[Any, dict[int, np.ndarray]] = {k: {} for k in self.cuts}
        jpegs: dict[int, bytes] = {}

        def fill(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                try:
                    data, hashes[i], sizes[i], mtimes[i] = read_source(self.paths[int(rows[i])], self.array)
                    if self._device_jpeg(data):
                        jpegs[i] = data
                        continue
                    decoded: dict[int, Any] = {}
                    for key, cut in self.cuts.items():
                        size = -1 if isinstance(data, np.ndarray) else cut.draft
                        if size not in decoded:
                            decoded[size] = image_from_array(data) if size < 0 else load_image(data, target_size=size)
                        img = decoded[size]
                        if on_device and img.width * img.height < cut.shape[0] * cut.shape[1]:
                            if i not in pixels[size]:
                                pixels[size][i] = np.asarray(img)
                            continue
                        x = cut.fn(img)
                        if tuple(x.shape) != cut.shape:
                            raise ImageError(f"preprocessing gave shape {tuple(x.shape)}, expected {cut.shape}")
                        (resized[key] if on_device else inputs[key])[i] = x
                    continue
                except Exception as e:  # a bad image (or a decoder bug on one) is a failed row, never the end of a run
                    errors[i] = failure_reason(e)
                status[i] = fcache.FAILED
                for arr in inputs.values():
                    arr[i] = 0
                for by_row in [*pixels.values(), *resized.values()]:
                    by_row.pop(i, None)

        k = min(n, parts) if pool is not None else 1
        if k > 1:
            bounds = np.linspace(0, n, k + 1).astype(int)
            list(pool.map(fill, bounds[:-1], bounds[1:]))  # type: ignore[union-attr]
        else:
            fill(0, n)
        tensors = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
        batch = Batch(np.asarray(rows, dtype=np.int64), status, hashes, sizes, mtimes, errors, tensors,
                      pixels={s: p for s, by_row in pixels.items() if (p := Packed.of(by_row)) is not None},
                      resized={k: p for k, by_row in resized.items() if (p := Packed.of(by_row)) is not None},
                      jpegs=Packed.of(jpegs))
        return batch.pin_memory() if (self.pin if pin is None else pin) else batch

    def finish(self, batch: Batch) -> Batch:
        """The batch with its inputs (on the device, when decoding moved there)."""
        if self.decode_on != "cpu":
            place_on_device(batch, self.cuts, self.device)
        return batch


class _BatchRows(torch.utils.data.Dataset):
    """Batch ``i`` of ``rows`` decoded in a DataLoader worker process (pinned later, in the parent)."""

    def __init__(self, decoder: _Decoder, rows: np.ndarray, batch_size: int) -> None:
        self.decoder, self.rows, self.batch_size = decoder, rows, batch_size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, i: int) -> Batch:
        return self.decoder.decode(self.rows[i * self.batch_size:(i + 1) * self.batch_size], pin=False)


DECODE_MODES = ("slices", "processes")


def decode_mode(device: str) -> str:
    """``slices`` when the forward runs on the CPU, ``processes`` when a GPU runs it (see
    :func:`_decoded_batches`)."""
    return "slices" if device.startswith("cpu") else "processes"


def _decoded_batches(decoder: _Decoder, rows: np.ndarray, batch_size: int, workers: int,
                     mode: str) -> Iterator[Batch]:
    """Batches in order, decoded by ``workers`` threads or processes (0: inline).

    ``slices`` (a CPU forward, which uses every core itself): each batch is decoded in ``workers``
    thread slices at once (PIL and hashlib release the GIL) and handed over before the next one
    starts. Decoding during a CPU forward would pre-empt one of its threads and stall the others at
    the next synchronisation (measured on 2 cores, lite0 bf16: 293 img/s decoding ahead in a thread
    vs 308-316 decoding between forward passes).
    ``processes`` (a GPU forward): a torch DataLoader's worker processes decode the next batches
    while the GPU runs, free of the GIL, and its pin thread page-locks them for asynchronous copies;
    at most ``2 * workers`` batches wait, so memory does not grow with the dataset.
    """
    if mode not in DECODE_MODES:
        raise FeaturepipeError(f"unknown decode mode {mode!r}")
    starts = range(0, len(rows), batch_size)
    if workers <= 0 or (workers == 1 and mode == "slices") or len(starts) <= 1:  # inline
        for lo in starts:
            yield decoder.finish(decoder.decode(rows[lo:lo + batch_size]))
        return
    if mode == "processes" and sys.platform.startswith("linux"):  # elsewhere fork is unsafe: slices
        loader = torch.utils.data.DataLoader(
            _BatchRows(decoder, rows, batch_size), batch_size=None, num_workers=min(workers, len(starts)),
            pin_memory=decoder.pin,
            prefetch_factor=2, multiprocessing_context="fork",  # workers inherit the decoder, nothing pickled
        )
        for batch in loader:
            yield decoder.finish(batch)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featpipe-decode")
    try:
        for lo in starts:
            yield decoder.finish(decoder.decode(rows[lo:lo + batch_size], pool, workers))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _forward(backbone: Backbone, x: torch.Tensor, ok: np.ndarray) -> np.ndarray:
    """Features of the rows where ``ok``; zero rows elsewhere."""
    feats = np.zeros((len(ok), backbone.feature_dim), dtype=np.float32)
    if ok.all():
        feats[:] = backbone.forward(x)
    elif ok.any():
        idx = np.flatnonzero(ok)
        feats[idx] = backbone.forward(x[torch.from_numpy(idx)])
    return feats


def run_backbone(
    backbone: Backbone,
    paths: Sequence[str],
    rows: np.ndarray,
    *,
    array: np.ndarray | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    decode: str = "auto",
) -> Iterator[Batch]:
    """Yield features for ``rows`` of ``paths`` batch by batch (failed images: zero rows)."""
    bs = batch_size or default_batch_size(backbone.device)
    workers = default_workers(backbone.device) if num_workers is None else num_workers
    decoder = _Decoder([backbone], paths, array, decode)
    for batch in _decoded_batches(decoder, np.asarray(rows), bs, workers, decode_mode(backbone.device)):
        batch.features = _forward(backbone, batch.inputs[decoder.keys[0]], batch.status == fcache.OK)
        batch.inputs = {}
        yield batch


class _WriterThread:
    """Cache writes in one background thread, so the forward pass does not wait on HDF5. Jobs run
    in order; an error stops the rest and is raised by the next :meth:`submit` or :meth:`close`."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featpipe-cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # handed to the main thread
                    self._error = e

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


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
    n_damaged: int = 0  # rows re-embedded because their chunk failed its checksum

    @property
    def images_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0


@functools.cache
def _keep_freed_memory() -> None:
    """glibc hands big freed blocks back to the OS at once, so every forward pass page-faults its
    activations in again (measured ~6,000 faults per image with lite0, 4x fewer with this): serve
    blocks up to 32 MiB from the heap and trim it only past 256 MiB free. Hand-written: no library
    exposes mallopt; a no-op off glibc."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def embed_dataset(manifest: Manifest, spec: BackboneSpec, *, cache_file: str | Path | None = None,
                  **options: Any) -> EmbedResult:
    """Embed every image of ``manifest`` not yet in its cache; return what was done. ``options`` are
    :func:`embed_datasets`' keywords (``cache_dir``, ``device``, ``batch_size``, ...)."""
    (res,) = embed_datasets(manifest, [spec], cache_files=[cache_file] if cache_file else None, **options)
    return res


def embed_datasets(
    manifest: Manifest,
    specs: Sequence[BackboneSpec],
    config: EmbedConfig | None = None,
    *,
    cache_dir: str | Path = "cache",
    cache_files: Sequence[str | Path] | None = None,
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
    decode: str = "auto",
) -> list[EmbedResult]:
    """Embed ``manifest`` with several backbones in one pass over the images (each image is read,
    hashed and decoded once), into one cache per backbone, equal to embedding with each alone.

    Failed rows are retried when they could succeed now (I/O failures, changed bytes); with
    ``retry_failed`` every failed row is. ``engine="ray"`` computes the rows on Ray Data
    (``featpipe.features.ray``, one backbone after the other); the caches are the same. ``decode``
    (:data:`featpipe.features.decode.DECODE_CHOICES`) says where images are resized (and JPEGs decoded):
    ``auto`` resizes on a CUDA device, with the CPU path's pixels. ``config`` (the `embed:` section, as
    the command line and pipeline files give it) sets the keywords it covers, in their place.
    """
    if config is not None:
        o = config.embed_options()
        batch_size, num_workers, feature_dtype, decode = o["batch_size"], o["num_workers"], o["feature_dtype"], o["decode"]
        engine, ray_address, ray_actors, retry_failed = o["engine"], o["ray_address"], o["ray_actors"], o["retry_failed"]
    if engine not in ENGINES:
        raise FeaturepipeError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if decode not in DECODE_CHOICES:
        raise FeaturepipeError(f"unknown decode mode {decode!r}; expected one of {', '.join(DECODE_CHOICES)}")
    if engine == "ray":
        from featpipe.features.ray import require_ray

        require_ray()
        if decode not in ("auto", "cpu"):
            raise FeaturepipeError(f"--decode {decode} is for the local engine (Ray decodes in its CPU tasks)")
    if feature_dtype not in FEATURE_DTYPES:
        raise FeaturepipeError(f"unknown feature dtype {feature_dtype!r}; expected float32 or float16")
    if len(manifest) == 0:
        raise FeaturepipeError(f"dataset {manifest.name!r} has no images")
    if not specs:
        raise FeaturepipeError("no backbone given")
    if cache_files is not None and len(cache_files) != len(specs):
        raise FeaturepipeError(f"{len(cache_files)} cache files for {len(specs)} backbones")
    t_start = time.perf_counter()
    _keep_freed_memory()
    dev = resolve_device(device) if engine == "local" else "cpu"  # Ray: the driver only reads the config
    backbones: list[Backbone] = []
    for spec in specs:
        torch.manual_seed(seed)
        backbones.append(load_backbone(spec, dev))
    placement = resolve_decode(decode, backbones) if engine == "local" else "cpu"
    jobs: list[tuple[Path, str, dict[str, Any]]] = []
    for i, (spec, backbone) in enumerate(zip(specs, backbones, strict=True)):
        key, config = fcache.features_key(backbone, feature_dtype, nvjpeg=uses_nvjpeg(placement, dev))
        path = Path(cache_files[i]) if cache_files else fcache.cache_path_for(manifest, spec, key, cache_dir)
        if any(path == p for p, _, _ in jobs):
            raise FeaturepipeError(f"backbone {spec.tag()} is given twice (same cache {path.name})")
        make_folder(path.parent, "cache")
        jobs.append((path, key, {
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
        }))
    # a cache folder this process cannot write: a current cache there is only read (no lock, no write)
    read_only = {i: _read_current(path, key, attrs["config"], manifest, force, retry_failed)
                 for i, (path, key, attrs) in enumerate(jobs) if not is_writable(path.parent)}
    if read_only:
        keep = [i for i in range(len(jobs)) if i not in read_only]
        jobs, backbones, specs = [jobs[i] for i in keep], [backbones[i] for i in keep], [specs[i] for i in keep]
    results: list[EmbedResult] = []
    with contextlib.ExitStack() as stack:
        for path, _, _ in jobs:
            stack.enter_context(fcache.write_lock(path))
        todos, reused, damaged = [], [], []
        for (path, key, attrs), backbone, spec in zip(jobs, backbones, specs, strict=True):
            if force and path.exists():
                path.unlink()
            if not cache_files and not force:
                fcache.start_from_sibling(path, manifest, spec, key)
            todo, n_reused, n_damaged = fcache.prepare_cache(path, manifest, key, attrs, backbone.feature_dim,
                                                             feature_dtype, retry_failed)
            todos.append(todo)
            reused.append(n_reused)
            damaged.append(n_damaged)
        t_embed = time.perf_counter()
        writers = [fcache.CacheWriter(path) for path, _, _ in jobs]
        for w in writers:
            stack.callback(w.close)
        if engine == "ray":
            from featpipe.features.ray import embed_rows_ray

            for w, backbone, todo in zip(writers, backbones, todos, strict=True):
                dev = embed_rows_ray(w, backbone, manifest, todo, device=device, address=ray_address,
                                     actors=ray_actors, batch_size=batch_size, progress=progress,
                                     write_every=write_every)
        else:
            _embed_rows(writers, backbones, manifest, todos, batch_size, num_workers, progress, write_every,
                        placement)
        seconds = time.perf_counter() - t_embed
        for (path, key, _), w, todo, n_reused, n_damaged in zip(jobs, writers, todos, reused, damaged, strict=True):
            failures = fcache.failures(w.f, manifest)
            prev = fcache.read_attrs(w.f).get("timings", {})
            w.set_attrs(
                completed=True,
                n_failed=len(failures),
                timings={
                    "embed_seconds_last_run": seconds,
                    "embed_seconds_total": float(prev.get("embed_seconds_total", 0.0)) + seconds,
                    "images_computed_last_run": len(todo),
                    "images_per_second_last_run": len(todo) / seconds if seconds > 0 else 0.0,
                    "device": dev,
                    "batch_size": batch_size or default_batch_size(dev),
                    "backbones_in_pass": len(backbones),
                    "engine": engine,
                    "decode": placement,
                    "host": platform.node(),
                },
            )
            results.append(EmbedResult(
                path=path, key=key, n_rows=len(manifest), n_computed=len(todo), n_reused=n_reused,
                n_failed=len(failures), seconds=0.0, failures=failures, n_damaged=n_damaged,
            ))
    for i in sorted(read_only):
        results.insert(i, read_only[i])
    for r in results:
        r.seconds = time.perf_counter() - t_start
    return results


def _read_current(path: Path, key: str, config: dict[str, Any], manifest: Manifest, force: bool,
                  retry_failed: bool) -> EmbedResult:
    """The result of an embed into ``path`` in a folder this process cannot write: its current cache, read as it
    is; one line naming the folder when the run would have to write there."""
    if force or not fcache.is_current(path, manifest, key, config, retry_failed):
        what = "--force rebuilds" if force else ("holds no complete cache" if not path.exists() else
                                                 "holds an incomplete or outdated cache")
        raise FolderError(f"the cache folder {path.parent} is not writable (read-only or another user's) and "
                          f"{what} {path.name}: use a writable --cache-dir")
    failures = fcache.failures(path, manifest)
    return EmbedResult(path=path, key=key, n_rows=len(manifest), n_computed=0, n_reused=len(manifest),
                       n_failed=len(failures), seconds=0.0, failures=failures)


def _embed_rows(
    writers: list[fcache.CacheWriter],
    backbones: list[Backbone],
    manifest: Manifest,
    todos: list[np.ndarray],
    batch_size: int | None,
    num_workers: int | None,
    progress: bool,
    write_every: int,
    decode: str = "cpu",
) -> None:
    if not todos:  # every cache is in a folder only read
        return
    rows = functools.reduce(np.union1d, todos) if len(todos) > 1 else todos[0]
    if len(rows) == 0:
        return
    from featpipe.progress import progress_bar

    dev = backbones[0].device
    bs = batch_size or default_batch_size(dev)
    threads = default_workers(dev) if num_workers is None else num_workers
    wanted = []  # per backbone: which manifest rows it still needs
    for todo in todos:
        mask = np.zeros(len(manifest), dtype=bool)
        mask[todo] = True
        wanted.append(mask)
    decoder = _Decoder(backbones, manifest.paths, manifest.array, decode)
    desc = "embed " + " + ".join(b.spec.tag() for b in backbones)
    bar = progress_bar(len(rows), desc, enabled=progress)
    pending: list[list[tuple]] = [[] for _ in backbones]
    n_pending = 0
    last_write = time.monotonic()
    background = _WriterThread()

    def flush() -> None:
        nonlocal pending, n_pending, last_write
        for w, parts in zip(writers, pending, strict=True):
            if parts:
                background.submit(functools.partial(_write_parts, w, parts))
        pending, n_pending, last_write = [[] for _ in backbones], 0, time.monotonic()

    try:
        for batch in _decoded_batches(decoder, rows, bs, threads, decode_mode(dev)):
            ok = batch.status == fcache.OK
            for j, backbone in enumerate(backbones):
                need = wanted[j][batch.rows]
                x = batch.inputs[decoder.keys[j]]
                if not need.all():
                    idx = np.flatnonzero(need)
                    x, sel = x[torch.from_numpy(idx)], idx
                else:
                    sel = slice(None)
                if len(x):
                    feats = _forward(backbone, x, ok[sel])
                    pending[j].append((batch.rows[sel], feats, batch.status[sel], _take(batch.hashes, sel),
                                       batch.sizes[sel], batch.mtimes[sel], _take(batch.errors, sel)))
            n_pending += len(batch.rows)
            bar.update(len(batch.rows))
            if n_pending >= write_every or time.monotonic() - last_write > 10:
                flush()
        flush()
    finally:
        bar.close()
        background.close()


def _take(items: list[str], sel: Any) -> list[str]:
    return items if isinstance(sel, slice) else [items[i] for i in sel]


def _write_parts(writer: fcache.CacheWriter, parts: list[tuple]) -> None:
    """One HDF5 write for several batches (few large writes instead of many small ones)."""
    rows, feats, status, hashes, sizes, mtimes, errors = zip(*parts, strict=True)
    writer.write_rows(np.concatenate(rows), np.concatenate(feats), np.concatenate(status),
                      [h for part in hashes for h in part], np.concatenate(sizes), np.concatenate(mtimes),
                      [e for part in errors for e in part])


# ------------------------------------------------------------------------- embedding loose images


@functools.lru_cache(maxsize=4)
def _cached_backbone(spec_json: str, preprocessing_json: str, device: str) -> Backbone:
    return load_backbone(BackboneSpec.from_dict(json.loads(spec_json)), device,
                         preprocessing=json.loads(preprocessing_json))


def embed_paths(
    spec: BackboneSpec | dict[str, Any],
    paths: Sequence[str | Path],
    *,
    batch_size: int | None = None,
    num_workers: int | None = 0,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Features for loose image files (no cache): ``(features, ok, errors)``. The one predict-time path.

    A spec dict's ``preprocessing`` (as a cache or bundle recorded it) replaces the backbone's current
    defaults. A fused spec (:mod:`featpipe.features.fuse`) embeds with each part, each with its own recorded
    preprocessing, and concatenates; an image is ok only if every part embedded it.
    """
    spec_dict = spec.to_dict() if isinstance(spec, BackboneSpec) else dict(spec)
    if spec_dict.get("kind") == "fused":
        feats, oks, errs = zip(*(embed_paths(part, paths, batch_size=batch_size, num_workers=num_workers,
                                             device=device) for part in spec_dict["parts"]), strict=True)
        ok = np.logical_and.reduce(oks)
        errors = [None if ok[i] else next((e[i] for e in errs if e[i]), "unreadable") for i in range(len(ok))]
        return np.concatenate(feats, axis=1), ok, errors
    pre = spec_dict.pop("preprocessing", None)
    backbone = _cached_backbone(json.dumps(spec_dict, sort_keys=True), json.dumps(pre, sort_keys=True),
                                resolve_device(device))
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
