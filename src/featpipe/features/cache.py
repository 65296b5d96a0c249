"""HDF5 feature caches: one file per (dataset, backbone config), readable with plain h5py.

Crash safety: a file is created complete (all datasets allocated, written to a temporary name,
then renamed). While embedding, only fixed-size raw rows are written: features first, flushed,
then the row's status, flushed. A process killed at any moment therefore leaves rows that are
either fully written and marked ``ok``, or still ``pending``; the next run resumes the pending ones.
Layout changes (images added, removed or changed) go through a new file and an atomic rename.

Integrity: the feature rows are stored in chunks that carry HDF5's own fletcher32 checksum, so a
damaged chunk fails on read: readers refuse the cache in one line, ``embed`` re-embeds its rows.
Caches written before the checksum (contiguous features) are read as they are, unchecked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from featpipe.data.images import read_source
from featpipe.data.manifest import Manifest
from featpipe.errors import CacheError, ImageError

FORMAT_VERSION = 1
PENDING, OK, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", OK: "ok", FAILED: "failed"}
ERROR_LEN = 200
CHUNK_BYTES = 256 << 10  # feature rows per checksummed chunk: what one damaged byte costs to re-embed
_str = h5py.string_dtype("utf-8")

if TYPE_CHECKING:  # the backbones package imports torch; reading a cache must not
    from featpipe.backbones import Backbone, BackboneSpec


def slug(text: str, max_len: int = 60, default: str = "dataset") -> str:
    """``text`` made safe for file names and HTML ids: runs of other characters become one '-'."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "-", text).strip("-")[:max_len] or default


def cache_filename(dataset_name: str, backbone_tag: str, key: str) -> str:
    return f"{slug(dataset_name)}__{slug(backbone_tag)}__{key[:10]}.h5"


@dataclass
class RowState:
    """What a cache knows about one image, to decide whether its features are still valid."""

    status: int
    content_hash: str
    size: int
    mtime_ns: int


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``<cache>.lock`` (filelock: POSIX and Windows); a second writer gets a clear error
    at once. The holder's pid is noted in ``<cache>.lock.owner`` for that message."""
    from filelock import FileLock, Timeout

    lock_path = path.with_name(path.name + ".lock")
    owner = path.with_name(path.name + ".lock.owner")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=0, is_singleton=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = owner.read_text().strip() or "?"
        except OSError:
            holder = "?"
        raise CacheError(
            f"cache {path.name} is being written by another featpipe process (pid {holder}); "
            "wait for it to finish or use another --cache-dir"
        ) from None
    try:
        owner.write_text(str(os.getpid()))
        yield
    finally:
        lock.release()  # the lock file stays (removing it would race)


def is_locked(path: Path) -> bool:
    from filelock import FileLock, Timeout

    lock_path = path.with_name(path.name + ".lock")
    if not lock_path.exists():
        return False
    try:
        FileLock(lock_path, timeout=0, is_singleton=False, thread_local=False).acquire().lock.release()
    except Timeout:
        return True
    return False


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode, locking=False)
    except FileNotFoundError:
        raise CacheError(f"cache file not found: {path}") from None
    except OSError as e:
        raise CacheError(
            f"cache file {path} is unreadable ({str(e).splitlines()[0][:80]}); delete it or re-run "
            "featpipe embed with --force"
        ) from None


def create_cache_file(
    path: Path,
    *,
    n: int,
    dim: int,
    feature_dtype: str,
    ids: list[str],
    paths: list[str],
    splits: list[str],
    labels: np.ndarray,
    labeled: np.ndarray,
    attrs: dict[str, Any],
    carry: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a complete new cache file (all rows allocated) under a temporary name, then rename.

    ``carry`` pre-fills ``features``, ``status``, ``content_hash``, ``size``, ``mtime_ns`` and
    ``error`` for rows kept from an older file.
    """
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            def fixed(name: str, shape: tuple, dtype: Any) -> h5py.Dataset:
                return f.create_dataset(name, shape=shape, dtype=dtype)

            if n:  # checksummed chunks of rows; a chunk rewritten at the same size stays in place
                rows = max(1, min(n, CHUNK_BYTES // (dim * np.dtype(feature_dtype).itemsize)))
                f.create_dataset("features", shape=(n, dim), dtype=np.dtype(feature_dtype), chunks=(rows, dim),
                                 fletcher32=True)
            else:
                fixed("features", (n, dim), np.dtype(feature_dtype))
            fixed("status", (n,), np.int8)
            fixed("content_hash", (n,), "S40")
            fixed("size", (n,), np.int64)
            fixed("mtime_ns", (n,), np.int64)
            fixed("error", (n,), f"S{ERROR_LEN}")
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_str)
            f.create_dataset("paths", data=np.array(paths, dtype=object), dtype=_str)
            f.create_dataset("split", data=np.array(splits, dtype=object), dtype=_str)
            f.create_dataset("labels", data=labels)
            f.create_dataset("labeled", data=labeled.astype(bool))
            # Write every row now (zeros or carried values) so all storage is allocated up front:
            # later row writes then never touch file metadata, which is what makes kill -9 safe.
            carry = carry or {}
            for name in ("features", "content_hash", "size", "mtime_ns", "error", "status"):
                ds = f[name]
                for lo in range(0, max(n, 1), 8192):
                    hi = min(n, lo + 8192)
                    if hi > lo:
                        ds[lo:hi] = carry[name][lo:hi] if name in carry else np.zeros((hi - lo, *ds.shape[1:]), ds.dtype)
            for k, v in attrs.items():
                f.attrs[k] = v if isinstance(v, (int, float, bool, np.integer)) else json.dumps(v, default=str)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CacheWriter:
    """Row writer for an open cache file; holds the caller's lock for its lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = _open_h5(path, "r+")

    def write_rows(
        self,
        rows: np.ndarray,
        feats: np.ndarray,
        status: np.ndarray,
        hashes: list[str],
        sizes: np.ndarray,
        mtimes: np.ndarray,
        errors: list[str],
    ) -> None:
        order = np.argsort(rows)
        rows = rows[order]
        f = self.f
        f["features"][rows] = feats[order].astype(f["features"].dtype)
        f["content_hash"][rows] = np.array([hashes[i].encode() for i in order], dtype="S40")
        f["size"][rows] = sizes[order]
        f["mtime_ns"][rows] = mtimes[order]
        f["error"][rows] = np.array(
            [errors[i].encode()[: ERROR_LEN - 1] for i in order], dtype=f"S{ERROR_LEN}"
        )
        f.flush()  # the data is in the OS before the status that vouches for it
        f["status"][rows] = status[order]
        f.flush()

    def set_attrs(self, **attrs: Any) -> None:
        for k, v in attrs.items():
            self.f.attrs[k] = v if isinstance(v, (int, float, bool, np.integer)) else json.dumps(v, default=str)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_attrs(f: h5py.File) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _strs(ds: h5py.Dataset) -> np.ndarray:
    return np.array(ds.asstr()[...], dtype=object)


def damaged_rows(ds: h5py.Dataset) -> np.ndarray:
    """Rows (sorted) of a feature dataset whose chunk fails its fletcher32 checksum.

    Reads every row, slab by slab (chunk by chunk inside a slab that fails); empty for a cache
    written before the checksum, which has none to check.
    """
    if not ds.fletcher32 or not ds.shape[0]:
        return np.zeros(0, dtype=np.int64)
    n, step = int(ds.shape[0]), int(ds.chunks[0])
    slab = step * max(1, SLAB_BYTES // (step * ds.shape[1] * ds.dtype.itemsize))
    bad = []
    for lo in range(0, n, slab):
        if not _readable(ds, lo, min(n, lo + slab)):
            bad += [np.arange(c, min(n, c + step)) for c in range(lo, min(n, lo + slab), step)
                    if not _readable(ds, c, min(n, c + step))]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def _readable(ds: h5py.Dataset, lo: int, hi: int) -> bool:
    try:
        ds[lo:hi]
    except OSError:
        return False
    return True


def _row_ranges(rows: np.ndarray, most: int = 3) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"`` (the first ``most`` runs, then how many rows more)."""
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(rows, cuts)]
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs[:most])
    rest = int(sum(b - a + 1 for a, b in runs[most:]))
    return text + (f" and {rest} more" if rest else "")


def _read_features(path: Path, ds: h5py.Dataset, sel: Any = ()) -> np.ndarray:
    """``ds[sel]``; a read that fails (a chunk failing its checksum) is one :class:`CacheError`."""
    try:
        return ds[sel]
    except OSError as e:
        bad = damaged_rows(ds)
        if len(bad):
            raise CacheError(
                f"cache {path.name} is damaged: feature rows {_row_ranges(bad)} fail their checksum; run the "
                "same featpipe embed command to re-embed them"
            ) from None
        raise CacheError(
            f"cache {path.name}: its features cannot be read ({str(e).splitlines()[0][:80]}); delete it or "
            "re-run featpipe embed with --force"
        ) from None


def read_row_states(path: Path) -> tuple[dict[str, Any], dict[str, RowState], h5py.File]:
    """Attributes and per-id row state of an existing cache (file left open for copying)."""
    f = _open_h5(path, "r")
    try:
        attrs = read_attrs(f)
        ids = _strs(f["ids"])
        status = f["status"][...]
        hashes = f["content_hash"][...]
        sizes = f["size"][...]
        mtimes = f["mtime_ns"][...]
    except KeyError as e:
        f.close()
        raise CacheError(f"{path} is not a featpipe feature cache (missing {e})") from None
    states = {
        i: RowState(int(s), h.decode(), int(sz), int(mt))
        for i, s, h, sz, mt in zip(ids, status, hashes, sizes, mtimes, strict=True)
    }
    return attrs, states, f


class FeatureCache:
    """Read-only view of a complete feature cache (see docs/features.md for the schema)."""

    def __init__(self, path: Path, attrs: dict[str, Any], data: dict[str, np.ndarray]) -> None:
        self.path = path
        self.attrs = attrs
        self.key: str = attrs["key"]
        self.config: dict[str, Any] = attrs["config"]
        self.backbone: dict[str, Any] = attrs["backbone"]
        self.dataset: dict[str, Any] = attrs["dataset"]
        self.task: str = attrs["task"]
        self.classes: list[str] = list(attrs["classes"])
        self.seed: int = int(attrs.get("seed", 0))
        self.versions: dict[str, str] = attrs.get("versions", {})
        self.embed_seconds: float = float(attrs.get("timings", {}).get("embed_seconds_total", 0.0))
        self.ids: np.ndarray = data["ids"]
        self.paths: np.ndarray = data["paths"]
        self.splits: np.ndarray = data["split"]
        self.labels: np.ndarray = data["labels"]
        self.labeled: np.ndarray = data["labeled"].astype(bool)
        self.status: np.ndarray = data["status"]
        self.errors: np.ndarray = data["error"]
        self.content_hash: np.ndarray = data["content_hash"]
        self.features: np.ndarray = data["features"]
        self.ok: np.ndarray = self.status == OK
        self.feature_dim: int = int(self.features.shape[1])
        self.in_memory: bool = isinstance(self.features, np.ndarray)

    @classmethod
    def open(cls, path: str | Path, *, allow_incomplete: bool = False, in_memory: bool = True,
             slab_bytes: int | None = None) -> FeatureCache:
        """Open a cache; ``in_memory=False`` leaves the features on disk (``features`` is then an
        :class:`H5Rows` over every row, read in slabs of about ``slab_bytes``), for caches larger than RAM."""
        path = Path(path)
        if not path.exists():
            raise CacheError(f"cache file not found: {path}")
        with _open_h5(path, "r") as f:
            attrs = read_attrs(f)
            if attrs.get("format") != "featpipe-features":
                raise CacheError(f"{path} is not a featpipe feature cache")
            if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise CacheError(f"{path} was written by a newer featpipe (format {attrs['format_version']})")
            if not attrs.get("completed") and not allow_incomplete:
                st = f["status"][...]
                raise CacheError(
                    f"cache {path.name} is incomplete ({int((st != PENDING).sum())} of {len(st)} rows "
                    "embedded); run the same featpipe embed command again to resume"
                )
            data = {k: _strs(f[k]) for k in ("ids", "paths", "split")}
            data["error"] = np.array([e.decode(errors="replace") for e in f["error"][...]], dtype=object)
            data["content_hash"] = np.array([h.decode() for h in f["content_hash"][...]], dtype=object)
            for k in ("labels", "labeled", "status"):
                data[k] = f[k][...]
            if in_memory:
                data["features"] = _read_features(path, f["features"]).astype(np.float32, copy=False)
        if not in_memory:
            data["features"] = H5Rows(path, np.arange(len(data["ids"])), slab_bytes=slab_bytes or SLAB_BYTES)
        return cls(path, attrs, data)

    def __len__(self) -> int:
        return len(self.ids)

    def split_indices(self, split: str) -> np.ndarray:
        """Rows of a split that were embedded fine and carry labels."""
        return np.flatnonzero((self.splits == split) & self.ok & self.labeled)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for s in self.splits:
            counts[str(s)] = counts.get(str(s), 0) + 1
        return {
            "path": str(self.path),
            "key": self.key,
            "backbone": self.backbone.get("name"),
            "layer": self.backbone.get("layer"),
            "dataset": self.dataset.get("name"),
            "task": self.task,
            "classes": len(self.classes),
            "rows": len(self),
            "ok": int(self.ok.sum()),
            "failed": int((self.status == FAILED).sum()),
            "feature_dim": self.feature_dim,
            "splits": counts,
        }


SLAB_BYTES = 32 << 20  # default slab of an out-of-core read: sequential I/O, bounded memory


class H5Rows:
    """Some rows of a cache's feature matrix, read from disk on demand (heads on caches larger than RAM).

    Reads go through contiguous slabs of the file (sequential I/O, at most ``slab_rows`` rows in memory),
    so memory stays bounded whatever the cache size. Row order is the file's order.
    """

    def __init__(self, path: str | Path, rows: np.ndarray, slab_rows: int | None = None, *,
                 slab_bytes: int = SLAB_BYTES) -> None:
        self.path = Path(path)
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))
        with _open_h5(self.path, "r") as f:
            self.n_features = int(f["features"].shape[1])
        # ``slab_rows`` rows, else about ``slab_bytes`` of float32 features (at least 64 rows)
        self.slab_rows = int(slab_rows or max(64, int(slab_bytes) // (4 * max(1, self.n_features))))

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.n_features)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions: np.ndarray) -> H5Rows:
        """The rows at ``positions`` (indices into this object), still on disk."""
        return H5Rows(self.path, self.rows[np.asarray(positions, dtype=np.int64)], self.slab_rows)

    def iter_blocks(self, rng: np.random.Generator | None = None):
        """Yield ``(positions, float64 block)`` slab by slab; with ``rng`` the slab order and the rows in
        each block are shuffled (an approximate shuffle whose memory stays one slab)."""
        if not len(self.rows):
            return
        starts = np.arange(self.rows[0], self.rows[-1] + 1, self.slab_rows)
        if rng is not None:
            starts = rng.permutation(starts)
        with _open_h5(self.path, "r") as f:
            ds = f["features"]
            for lo in starts:
                a, b = np.searchsorted(self.rows, [lo, lo + self.slab_rows])
                if a == b:
                    continue
                pos = np.arange(a, b)
                slab = _read_features(self.path, ds, np.s_[int(lo):int(self.rows[b - 1]) + 1])
                block = np.asarray(slab[self.rows[a:b] - lo], dtype=np.float64)
                if rng is not None:
                    perm = rng.permutation(len(pos))
                    pos, block = pos[perm], block[perm]
                yield pos, block

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (positions) as float64."""
        rows = self.rows[start:stop]
        if not len(rows):
            return np.zeros((0, self.n_features))
        with _open_h5(self.path, "r") as f:
            slab = _read_features(self.path, f["features"], np.s_[int(rows[0]):int(rows[-1]) + 1])
        return np.asarray(slab[rows - rows[0]], dtype=np.float64)

    def to_array(self) -> np.ndarray:
        out = np.empty(self.shape)
        for pos, block in self.iter_blocks():
            out[pos] = block
        return out


def list_caches(cache_dir: str | Path) -> list[dict[str, Any]]:
    """One summary row per cache file in a folder (incomplete and unreadable ones included)."""
    rows = []
    for p in sorted(Path(cache_dir).glob("*.h5")):
        try:
            with _open_h5(p, "r") as f:
                a = read_attrs(f)
                st = f["status"][...]
                dim = f["features"].shape[1]
            rows.append({
                "file": p.name,
                "dataset": a.get("dataset", {}).get("name"),
                "backbone": a.get("backbone", {}).get("name"),
                "layer": a.get("backbone", {}).get("layer"),
                "rows": len(st),
                "ok": int((st == OK).sum()),
                "failed": int((st == FAILED).sum()),
                "dim": dim,
                "state": "complete" if a.get("completed") else ("writing" if is_locked(p) else "incomplete"),
                "key": str(a.get("key", ""))[:10],
            })
        except (CacheError, KeyError, OSError) as e:
            rows.append({"file": p.name, "state": f"unreadable: {e}"})
    return rows


# ------------------------------------------------------------------- validity of an existing cache


def features_key(backbone: Backbone, feature_dtype: str, nvjpeg: bool = False) -> tuple[str, dict[str, Any]]:
    """The cache key and what it hashes. ``nvjpeg``: plain JPEGs were decoded by nvJPEG, whose pixels
    differ slightly from PIL's (every other way of decoding gives PIL's pixels and the same key)."""
    from featpipe.backbones import config_hash

    config = {
        **backbone.config(),
        "decode": "nvjpeg+pil-rgb-exif-jpegdraft" if nvjpeg else "pil-rgb-exif-jpegdraft",
        "feature_dtype": feature_dtype,
        "format_version": FORMAT_VERSION,
    }
    return config_hash(config), config


def cache_path_for(manifest: Manifest, spec: BackboneSpec, key: str, cache_dir: str | Path) -> Path:
    """``<dataset>__<backbone tag>__<hash of features key, dataset source and featpipe's split>.h5``."""
    from featpipe.backbones import config_hash

    split = manifest.split_identity()
    file_key = config_hash({"features": key, "dataset": manifest.source, **({"split": split} if split else {})})
    return Path(cache_dir) / cache_filename(manifest.name, spec.tag(), file_key)


def start_from_sibling(path: Path, manifest: Manifest, spec: BackboneSpec, key: str) -> Path | None:
    """Before a new cache ``path`` is created, start it from a cache of the same dataset and features
    key in the same folder, so its rows are reused (they are content-keyed; only the layout changes).

    A cache an older featpipe named without the split is renamed to ``path``; one made with another
    split seed or fractions is copied (it stays valid for that split). Returns the file used, if any.
    """
    from featpipe.backbones import config_hash

    if path.exists():
        return None
    legacy = path.with_name(cache_filename(manifest.name, spec.tag(),
                                           config_hash({"features": key, "dataset": manifest.source})))
    if legacy != path and legacy.exists() and not is_locked(legacy):
        os.replace(legacy, path)
        return legacy
    for p in sorted(path.parent.glob(cache_filename(manifest.name, spec.tag(), "*"))):
        if p == path or is_locked(p):
            continue
        try:
            with _open_h5(p, "r") as f:
                a = read_attrs(f)
        except CacheError:
            continue
        if a.get("key") == key and a.get("dataset", {}).get("source") == manifest.source:
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            shutil.copyfile(p, tmp)
            os.replace(tmp, path)
            return p
    return None


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


def _still_valid(state: RowState, path: str, array: np.ndarray | None) -> tuple[bool, int]:
    """Whether a cached row still matches the image on disk; also returns its current mtime."""
    if array is not None and "#" in path:
        data, chash, _, _ = read_source(path, array)
        return chash == state.content_hash, 0
    try:
        st = os.stat(path)
    except OSError:
        return False, 0
    if st.st_size == state.size and st.st_mtime_ns == state.mtime_ns:
        return True, st.st_mtime_ns
    try:
        _, chash, _, _ = read_source(path, None)
    except ImageError:
        return False, 0
    return chash == state.content_hash, st.st_mtime_ns


def prepare_cache(
    path: Path, manifest: Manifest, key: str, attrs: dict[str, Any], dim: int, feature_dtype: str,
    retry_failed: bool = False,
) -> tuple[np.ndarray, int, int]:
    """Make ``path`` a cache laid out for ``manifest``, keeping every still-valid row.

    A failed row is retried when its bytes changed, when they were never read (an I/O failure, which
    may be transient: its content hash is empty), or always with ``retry_failed``. Rows in a chunk
    that fails its checksum are not kept: the file is rewritten without them, and they are embedded again.
    Returns the rows still to embed, the number of rows reused and the number of damaged rows.
    """
    for stale in path.parent.glob(path.name + ".tmp*"):
        stale.unlink()  # left by a run killed while writing a new layout
    n = len(manifest)
    new = dict(
        n=n, dim=dim, feature_dtype=feature_dtype, ids=manifest.ids, paths=manifest.paths,
        splits=manifest.splits, labels=manifest.labels, labeled=manifest.labeled, attrs=attrs,
    )
    if not path.exists():
        create_cache_file(path, **new)
        return np.arange(n), 0, 0

    old_attrs, states, f = read_row_states(path)
    try:
        keep, mtimes = _rows_to_keep(path, old_attrs, states, manifest, key, attrs["config"], retry_failed)
        damaged = damaged_rows(f["features"])
        if len(damaged):  # rows in a chunk that fails its checksum are embedded again
            bad_ids = set(_strs(f["ids"])[damaged])
            keep &= np.array([i not in bad_ids for i in manifest.ids], dtype=bool)
        if not len(damaged) and _same_layout(f, manifest):
            f.close()
            w = CacheWriter(path)
            try:
                changed = np.flatnonzero(~keep & (w.f["status"][...] != PENDING))
                if len(changed):  # image bytes changed: those rows go back to pending
                    w.f["status"][changed] = PENDING
                touched = np.flatnonzero(keep & (mtimes != w.f["mtime_ns"][...]))
                if len(touched):  # same bytes, new mtime: remember it to skip re-hashing next time
                    w.f["mtime_ns"][touched] = mtimes[touched]
                w.set_attrs(**{**attrs, "completed": False})
            finally:
                w.close()
            return np.flatnonzero(~keep), int(keep.sum()), 0
        # new layout (images added / removed / relabelled) or damaged chunks: valid rows into a fresh file
        # (the read below touches only the chunks of kept rows)
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
    create_cache_file(path, **new, carry=carry)
    return np.flatnonzero(~keep), int(keep.sum()), len(damaged)


def _rows_to_keep(
    path: Path, old_attrs: dict[str, Any], states: dict[str, RowState], manifest: Manifest, key: str,
    config: dict[str, Any] | None, retry_failed: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of ``manifest`` the cache ``path`` holds still valid, and their files' current mtimes;
    :class:`CacheError` when it was built with another backbone config or for another dataset."""
    if old_attrs.get("key") != key:
        diff = _config_diff(old_attrs.get("config", {}), config or {})
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
    keep = np.zeros(len(manifest), dtype=bool)
    mtimes = np.zeros(len(manifest), dtype=np.int64)
    for i, (img_id, p) in enumerate(zip(manifest.ids, manifest.paths, strict=True)):
        st = states.get(img_id)
        if st is None or st.status == PENDING:
            continue
        if st.status == FAILED and (retry_failed or not st.content_hash):
            continue
        keep[i], mtimes[i] = _still_valid(st, p, manifest.array)
    return keep, mtimes


def is_current(path: Path, manifest: Manifest, key: str, config: dict[str, Any] | None = None,
               retry_failed: bool = False) -> bool:
    """Whether an embed into ``path`` has nothing to compute: complete, same layout, every row still valid.
    Only reads, so a cache in a folder this process cannot write is still used as it is."""
    if not path.exists():
        return False
    old_attrs, states, f = read_row_states(path)
    try:
        keep, _ = _rows_to_keep(path, old_attrs, states, manifest, key, config, retry_failed)
        return (bool(old_attrs.get("completed")) and bool(keep.all()) and _same_layout(f, manifest)
                and not len(damaged_rows(f["features"])))
    finally:
        f.close()


def failures(f: h5py.File | Path, manifest: Manifest) -> list[tuple[str, str]]:
    """``(image id, reason)`` of every failed row of the cache ``f`` (open, or a path; reads only those rows)."""
    if isinstance(f, Path):
        with _open_h5(f, "r") as opened:
            return failures(opened, manifest)
    failed = np.flatnonzero(f["status"][...] == FAILED)
    errors = f["error"][failed] if len(failed) else []
    return [(manifest.ids[i], e.decode(errors="replace")) for i, e in zip(failed, errors, strict=True)]


_IDENTITY_FIELDS = ("name", "kind", "arch", "weights", "weights_id", "layer", "image_size", "tta", "align", "pool")


def backbone_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What makes two backbone specs the same network: weights, layer, size (not precision; the seed
    only for random-init weights, where it is in ``weights_id``)."""
    return {k: spec.get(k) for k in _IDENTITY_FIELDS}


def find_cache(
    cache_dir: str | Path, manifest: Manifest, spec: BackboneSpec, *, precision: str = "auto",
    auto_precision: Callable[[], str] | None = None,
) -> Path | None:
    """The cache in ``cache_dir`` for this dataset (source, split seed and fractions) and backbone identity.

    One such cache is used whatever precision made it; among several, the one with the precision
    ``precision="auto"`` means on this machine: ``auto_precision()`` when given (called only then: it
    may import torch), else ``spec.precision``. An explicit ``precision`` only accepts that one. Several
    left: :class:`CacheError` listing them. No model is built.
    """
    want = backbone_identity(spec.to_dict())
    split = manifest.split_identity() or {}
    found: list[tuple[Path, str]] = []
    for p in sorted(Path(cache_dir).glob("*.h5")):
        try:
            with _open_h5(p, "r") as f:
                a = read_attrs(f)
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
        prefer = auto_precision() if precision == "auto" and auto_precision else spec.precision
        found = [(p, prec) for p, prec in found if prec == prefer] or found
    if len(found) > 1:
        raise CacheError(
            f"several caches of this dataset and backbone in {cache_dir}: "
            + ", ".join(f"{p.name} ({prec})" for p, prec in found)
            + "; pass --precision to pick one, or --cache FILE"
        )
    return found[0][0] if found else None


def rows_to_embed(path: str | Path, manifest: Manifest) -> tuple[int, str]:
    """How many rows of ``manifest`` an embed into the existing ``path`` would (re)compute, and why.

    Builds no model; reads the features once to check their checksums, and hashes an image's bytes
    only when its size or mtime changed.
    """
    attrs, states, f = read_row_states(Path(path))
    try:
        if attrs.get("dataset", {}).get("source") != manifest.source:
            return len(manifest), "the cache holds another dataset"
        damaged = damaged_rows(f["features"])
        bad_ids = set(_strs(f["ids"])[damaged]) if len(damaged) else set()
        todo = new = changed = broken = 0
        for img_id, p in zip(manifest.ids, manifest.paths, strict=True):
            st = states.get(img_id)
            if st is None or st.status == PENDING:
                todo += 1
                new += st is None
                continue
            if img_id in bad_ids:
                todo += 1
                broken += 1
                continue
            if not _still_valid(st, p, manifest.array)[0]:
                todo += 1
                changed += 1
        layout = _same_layout(f, manifest)
    finally:
        f.close()
    reasons = [f"{new} new images" if new else "", f"{changed} changed images" if changed else "",
               f"{broken} rows failing their checksum (damaged file)" if broken else "",
               f"{todo - new - changed - broken} unfinished rows" if todo - new - changed - broken else ""]
    why = ", ".join(r for r in reasons if r)
    from featpipe.versions import versions_diff

    changed_libs = versions_diff(attrs.get("versions"))
    if not why and changed_libs:  # the embed re-checks the feature key (preprocessing may have changed)
        return 0, "library versions changed: " + "; ".join(changed_libs[:3])
    if not why and not layout:
        return 0, "rows removed or relabelled (the cache is rewritten, no image re-embedded)"
    if not why and not attrs.get("completed"):
        return 0, "the last embed did not finish"
    return todo, why
