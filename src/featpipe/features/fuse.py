"""Feature fusion: several caches of one dataset seen as one (features concatenated, rows matched by
image id), and the matching extractor for loose images (each part's backbone, concatenated).

A head fitted on a :class:`FusedCache` records a ``kind: "fused"`` backbone spec listing every part's
spec (with its recorded preprocessing), so its bundle embeds new images with every backbone it needs
(:func:`featpipe.features.embed.embed_paths`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.errors import CacheError
from featpipe.features.cache import FeatureCache, slug


def fused_spec(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The recorded backbone spec of a fused head: its parts in order."""
    name = "fuse(" + "+".join(_tag(p) for p in parts) + ")"
    return {"name": name, "kind": "fused", "parts": [dict(p) for p in parts], "layer": None}


def _tag(spec: dict[str, Any]) -> str:
    from featpipe.backbones import BackboneSpec

    return BackboneSpec.from_dict(spec).tag()


class FusedCache:
    """Read-only, FeatureCache-like view over caches of the same dataset; only rows embedded fine in every
    part are kept (``n_dropped`` counts the others)."""

    def __init__(self, caches: Sequence[FeatureCache], models_dir: str | Path = ".") -> None:
        if len(caches) < 2:
            raise CacheError("fusing needs at least two caches")
        first = caches[0]
        for c in caches[1:]:
            if c.task != first.task or list(c.classes) != list(first.classes):
                raise CacheError(f"cannot fuse {Path(c.path).name} with {Path(first.path).name}: "
                                 "they hold different tasks or classes")
        index = [{str(i): r for r, i in enumerate(c.ids)} for c in caches]
        ok_ids = [i for r, i in enumerate(first.ids) if first.ok[r]
                  and all(str(i) in ix and c.ok[ix[str(i)]] for c, ix in zip(caches[1:], index[1:], strict=True))]
        rows = [np.array([ix[str(i)] for i in ok_ids], dtype=np.int64) for ix in index]
        for c, r in zip(caches[1:], rows[1:], strict=True):
            if not (np.array_equal(c.splits[r], first.splits[rows[0]])
                    and np.array_equal(c.labels[r], first.labels[rows[0]])):
                raise CacheError(f"cannot fuse {Path(c.path).name} with {Path(first.path).name}: the same images "
                                 "have other splits or labels (made with another split seed?)")
        r0 = rows[0]
        self.parts = list(caches)
        self.n_dropped = len(first) - len(ok_ids)
        self.ids = first.ids[r0]
        self.paths = first.paths[r0]
        self.splits = first.splits[r0]
        self.labels = first.labels[r0]
        self.labeled = first.labeled[r0]
        self.ok = np.ones(len(r0), dtype=bool)
        self.status = np.ones(len(r0), dtype=np.int8)
        self.content_hash = first.content_hash[r0]
        self.features = np.concatenate([c.features[r] for c, r in zip(caches, rows, strict=True)], axis=1)
        self.in_memory = True
        self.feature_dim = int(self.features.shape[1])
        self.task, self.classes, self.dataset = first.task, list(first.classes), first.dataset
        # each part with the preprocessing its cache was embedded with, so a bundle embeds new images alike
        self.backbone = fused_spec([{**c.backbone, "preprocessing": c.config.get("preprocessing")} for c in caches])
        self.key = hashlib.sha256("|".join(c.key for c in caches).encode()).hexdigest()
        self.config = {"fused": [c.config for c in caches]}
        self.embed_seconds = float(sum(c.embed_seconds for c in caches))
        self.seed = first.seed
        name = slug(str(first.dataset.get("name", "dataset"))) + "__" + slug(self.backbone["name"], 80)
        self.path = Path(models_dir) / f"{name}__{self.key[:10]}.h5"  # names the run; no file is written

    def __len__(self) -> int:
        return len(self.ids)

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero((self.splits == split) & self.labeled)
