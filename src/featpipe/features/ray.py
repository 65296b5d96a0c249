"""Ray Data engine for ``featpipe embed``: decode in Ray tasks, run the backbone in an actor pool,
stream the rows back to the one cache writer of the driver.

Only the row computation moves to Ray; the cache key, file, lock, resume, content hashes and
failed rows are the local engine's (``featpipe.features.embed.embed_dataset`` calls :func:`embed_rows_ray`
between ``prepare_cache`` and the final attributes). Image paths (and weight files) must be
readable under the same path on every Ray worker: a shared file system, or object storage mounted
as one (the rows are read with plain file I/O, like the local engine, so the content hash is the same).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from typing import Any

import numpy as np

from featpipe.backbones import Backbone, BackboneSpec, load_backbone
from featpipe.data.images import failure_reason, image_from_array, load_image, read_source
from featpipe.data.manifest import Manifest
from featpipe.errors import FeaturepipeError, import_optional
from featpipe.features import cache as fcache
from featpipe.hardware import available_cpus

DECODE_BATCH = 32  # rows per decode task call: big enough to amortise Ray's per-call overhead
# Decoding is light next to the forward and partly waits on storage: two decode tasks per core.
# (A fractional size also keeps Ray from fusing decoding into the backbone actors, whose whole
# CPU counts differ, so decoding overlaps the forward on other cores.)
DECODE_CPUS = 0.5


def require_ray() -> None:
    """Raise a one-line error naming ``featpipe[ray]`` when Ray Data is not installed."""
    import_optional("ray.data", "ray", "the Ray engine (--engine ray)")


def connect(address: str | None) -> bool:
    """Join the cluster at ``address``, or start a local Ray instance; True if this call started it.

    An already initialised Ray (a notebook, a test fixture) is used as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    # worker output stays in Ray's session logs; a failure's cause is raised here as one line
    kw: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=available_cpus(), **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise FeaturepipeError(f"cannot start {where}: {str(e).splitlines()[0][:160]}") from None
    return True


# ------------------------------------------------------------------------------ Ray-side functions


@functools.lru_cache(maxsize=2)
def _cpu_backbone(spec_json: str) -> Backbone:
    """The backbone on CPU, built once per Ray worker process, for its ``preprocess`` only (the
    transform is derived from the model, so it is rebuilt from the spec rather than pickled)."""
    import json

    return load_backbone(BackboneSpec.from_dict(json.loads(spec_json)), "cpu")


def decode_rows(batch: dict[str, np.ndarray], spec_json: str, array_ref: Any = None) -> dict[str, np.ndarray]:
    """Ray task: read, hash, decode and preprocess a batch of manifest rows.

    A bad image becomes a failed row with its reason (zeros as pixels), as in the local engine.
    """
    import ray
    import torch

    backbone = _cpu_backbone(spec_json)
    array = ray.get(array_ref) if array_ref is not None else None
    shape = tuple(backbone.preprocessing["input_size"])
    crop = float(backbone.preprocessing.get("crop_pct", 1.0)) or 1.0
    draft = int(np.ceil(max(shape[1:]) / crop))
    n = len(batch["row"])
    pixels: list[torch.Tensor] = []
    status = np.full(n, fcache.OK, dtype=np.int8)
    hashes, errors = [""] * n, [""] * n
    sizes, mtimes = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for k, path in enumerate(batch["path"]):
        try:
            data, hashes[k], sizes[k], mtimes[k] = read_source(str(path), array)
            img = image_from_array(data) if isinstance(data, np.ndarray) else load_image(data, target_size=draft)
            pixels.append(backbone.preprocess(img))
            continue
        except Exception as e:  # a bad image (or a decoder bug on one) is a failed row, never the end of a run
            errors[k] = failure_reason(e)
        status[k] = fcache.FAILED
        pixels.append(torch.zeros(shape))
    return {
        "row": np.asarray(batch["row"], dtype=np.int64),
        "pixels": torch.stack(pixels).numpy(),
        "status": status,
        "hash": np.array(hashes, dtype=object),
        "size": sizes,
        "mtime": mtimes,
        "error": np.array(errors, dtype=object),
    }


class BackboneActor:
    """Ray actor: one backbone (GPU actors: on the GPU Ray assigned it), features for decoded rows."""

    def __init__(self, spec: dict[str, Any], device: str, threads: int) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.backbone = load_backbone(BackboneSpec.from_dict(spec), device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = batch["status"] == fcache.OK
        feats = np.zeros((len(ok), self.backbone.feature_dim), dtype=np.float32)
        if ok.any():
            feats[ok] = self.backbone.forward(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["features"] = feats
        return out


# ---------------------------------------------------------------------------------- the driver


def _plan(device: str, actors: int | None) -> tuple[str, int, dict[str, Any], int]:
    """Actor device, count, Ray resources per actor and torch threads per actor, from the cluster."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    if device.startswith("cuda") and gpus == 0:
        raise FeaturepipeError("--device cuda was asked for but the Ray cluster has no GPU")
    if gpus and device != "cpu":
        n = actors or gpus
        return "cuda", n, {"num_gpus": 1, "num_cpus": 1}, 0
    n = actors or max(1, cpus // 8)
    node_cpus = max((int(nd["Resources"].get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive")), default=cpus)
    # a CPU actor's torch threads use its share of the cores (within one machine); it reserves one
    # core less, which the decode tasks (each DECODE_CPUS) can always be scheduled on
    threads = max(1, min(cpus // n, node_cpus))
    return "cpu", n, {"num_cpus": max(1, threads - 1)}, threads


def embed_rows_ray(
    writer: fcache.CacheWriter,
    backbone: Backbone,
    manifest: Manifest,
    todo: np.ndarray,
    *,
    device: str = "auto",
    address: str | None = None,
    actors: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    write_every: int = 256,
) -> str:
    """Compute ``todo`` rows of ``manifest`` on Ray and write them with ``writer``; return the
    actor device ("cuda" or "cpu")."""
    require_ray()
    if len(todo) == 0:
        return "cpu" if device == "auto" else device
    import json

    import ray
    import ray.data

    from featpipe.progress import progress_bar

    started = connect(address)
    data_log = logging.getLogger("ray.data")
    log_level = data_log.level
    data_log.setLevel(logging.CRITICAL)  # a failure is raised below as one line, not logged as a traceback
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # featpipe's own bar counts written rows
        ctx.print_on_execution_start = False
        actor_device, n_actors, resources, threads = _plan(device, actors)
        bs = batch_size or (64 if actor_device == "cuda" else 8)  # the local engine's defaults
        spec_json = json.dumps(backbone.spec.to_dict(), sort_keys=True)
        array_ref = ray.put(manifest.array) if manifest.array is not None else None
        items = [{"row": int(r), "path": manifest.paths[int(r)]} for r in todo]
        ds = (
            ray.data.from_items(items, override_num_blocks=max(1, min(math.ceil(len(items) / DECODE_BATCH), 4096)))
            .map_batches(decode_rows, batch_size=DECODE_BATCH, batch_format="numpy",
                         fn_kwargs={"spec_json": spec_json, "array_ref": array_ref},
                         num_cpus=DECODE_CPUS)
            .map_batches(BackboneActor, batch_size=bs, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=n_actors),
                         fn_constructor_kwargs={"spec": backbone.spec.to_dict(), "device": actor_device,
                                                "threads": threads},
                         **resources)
        )
        bar = progress_bar(len(todo), f"embed {backbone.spec.tag()} on Ray ({n_actors} {actor_device} actor"
                                      f"{'s' if n_actors > 1 else ''})", enabled=progress)
        try:
            for b in ds.iter_batches(batch_size=write_every, batch_format="numpy"):
                writer.write_rows(b["row"], b["features"], b["status"], [str(h) for h in b["hash"]],
                                  b["size"], b["mtime"], [str(e) for e in b["error"]])
                bar.update(len(b["row"]))
        except ray.exceptions.RayError as e:
            raise FeaturepipeError(f"Ray engine failed on a worker: {_root_cause(e)}") from None
        finally:
            bar.close()
        return actor_device
    finally:
        data_log.setLevel(log_level)
        if started:
            ray.shutdown()


_ERROR_LINE = re.compile(r"^([\w.]+(?:Error|Exception)): (.+)$")


def _root_cause(e: BaseException) -> str:
    """The worker's own error line inside a Ray failure (its traceback arrives as text)."""
    texts, cause = [], e
    while cause is not None and len(texts) < 5:
        texts.append(str(cause))
        nxt = getattr(cause, "cause", None)
        cause = nxt if isinstance(nxt, BaseException) and nxt is not cause else None
    found = [m.groups() for t in texts for m in (_ERROR_LINE.match(ln.strip()) for ln in t.splitlines()) if m]
    for name, msg in reversed(found):  # featpipe's own error first, then any that is not Ray's wrapper
        if name.startswith("featpipe.errors."):
            return msg
    for name, msg in reversed(found):
        if not name.startswith("ray."):
            return f"{name.rsplit('.', 1)[-1]}: {msg}"[:200]
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]
