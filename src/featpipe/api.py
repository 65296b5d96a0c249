"""The Python face of featpipe: the job in a few calls, over the same functions the CLI runs.

``import featpipe`` exposes these lazily (the package import stays light): :func:`load_dataset`,
:func:`embed`, :func:`fit`, :func:`report`, :func:`run`, :func:`load_model`, and :class:`Embedder`, a
scikit-learn transformer from image paths to features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from featpipe.errors import FeaturepipeError

PathLike = str | os.PathLike


def load_dataset(source: Any, **options: Any) -> Any:
    """A :class:`featpipe.data.Manifest` from an image folder, a CSV, an .npz, label lists or a Hugging Face
    dataset (see docs/data.md; ``options`` as the CLI's data options: ``fractions``, ``label_col``, ..., or
    ``config=DataConfig(...)``, the section the command line and pipeline files fill; a Hugging Face
    dataset's images go to ``cache_dir``, default ``cache``)."""
    from featpipe.data import Manifest
    from featpipe.data import load_dataset as _load
    from featpipe.data.config import open_dataset

    if isinstance(source, Manifest):
        return source
    config = options.pop("config", None)
    if config is not None:
        if options:
            raise FeaturepipeError(f"give either config or options ({', '.join(options)}), not both")
        return open_dataset(config, str(source))
    return _load(source, **options)


def embed(dataset: Any, backbone: Any = None, *, cache_dir: PathLike = "cache", pretrained: bool = True,
          weights: PathLike | None = None, layer: str | None = None, image_size: int | None = None,
          precision: str = "auto", seed: int = 0, device: str = "auto", **options: Any) -> Any:
    """Embed every image of ``dataset`` (a Manifest or a path) with ``backbone`` (a name, a BackboneSpec or
    a :class:`~featpipe.backbones.config.BackboneConfig`; default ``efficientnet_lite0``) into its cache,
    resuming one that exists; returns the open :class:`featpipe.features.cache.FeatureCache`. ``options``:
    :func:`featpipe.features.embed.embed_dataset`' keywords (``config=EmbedConfig(...)`` among them)."""
    from featpipe.backbones import DEFAULT_BACKBONE, BackboneSpec, resolve_spec
    from featpipe.backbones.config import BackboneConfig
    from featpipe.data import Manifest, detect_source
    from featpipe.features.cache import FeatureCache
    from featpipe.features.embed import embed_dataset
    from featpipe.hardware import resolve_device

    hf = not isinstance(dataset, Manifest) and detect_source(dataset) == "hf"
    manifest = load_dataset(dataset, **({"cache_dir": cache_dir} if hf else {}))
    if isinstance(backbone, BackboneSpec):
        spec = backbone
    elif isinstance(backbone, BackboneConfig):
        spec = backbone.spec(seed=seed, device=resolve_device(device))
    else:
        spec = resolve_spec(backbone or DEFAULT_BACKBONE, weights=weights, pretrained=pretrained, layer=layer,
                            image_size=image_size, precision=precision, seed=seed, device=resolve_device(device))
    options.setdefault("progress", False)
    res = embed_dataset(manifest, spec, cache_dir=cache_dir, device=device, seed=seed, **options)
    return FeatureCache.open(res.path)


def fit(cache: Any, head: str = "logistic", *, out: PathLike | None = None, **options: Any) -> list[Any]:
    """Fit and tune ``head`` (``logistic``, ``mlp``, ``lgbm`` or ``all``) on a cache (open, or its path);
    with ``out``, each run is written to ``out/<run>/<head>/`` (its ``dir``). ``options``:
    :func:`featpipe.runs.fit.fit_cache`' keywords (``metric``, ``refit``, ``cv``, ``seed``, ..., or
    ``config=FitConfig(...)``)."""
    from featpipe.runs.fit import fit_cache, open_cache, write_run

    if isinstance(cache, (str, os.PathLike)):
        cache = open_cache(cache)
    runs = fit_cache(cache, head, **options)
    if out is not None:
        for r in runs:
            r.dir = write_run(r, out)
    return runs


def report(models: PathLike | None = None, *, cache_dir: PathLike | None = None, out: PathLike = "report",
           **options: Any) -> Path:
    """Build the HTML report of every run under ``models`` (and caches in ``cache_dir``); returns index.html."""
    from featpipe.reporting import build_report

    return build_report(cache_dir=cache_dir, models_dir=models, out=out, **options)


def run(pipeline: dict[str, Any] | PathLike, **options: Any) -> dict[str, Any]:
    """Run a whole study from a pipeline file or dict (see `featpipe run --schema`)."""
    from featpipe.pipeline import run_pipeline

    options.setdefault("progress", False)
    return run_pipeline(pipeline, **options)


def load_model(path: PathLike, verify: bool = True) -> Any:
    """A saved bundle (``model.joblib``): ``predict`` / ``predict_proba`` on image paths or feature arrays."""
    from featpipe.bundle.io import load_model as _load

    return _load(path, verify=verify)


class Embedder(TransformerMixin, BaseEstimator):
    """Image paths -> features of a frozen backbone, as a scikit-learn transformer.

    ``make_pipeline(Embedder("efficientnet_lite0"), LogisticRegression())`` fits and clones like any
    pipeline. Nothing is cached on disk (use :func:`embed` for datasets); ``on_error="raise"`` stops at
    an unreadable image with one line, ``"nan"`` gives its row NaNs.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", *, pretrained: bool = True,
                 weights: PathLike | None = None, layer: str | None = None, image_size: int | None = None,
                 precision: str = "auto", device: str = "auto", batch_size: int | None = None, seed: int = 0,
                 on_error: str = "raise"):
        self.backbone = backbone
        self.pretrained = pretrained
        self.weights = weights
        self.layer = layer
        self.image_size = image_size
        self.precision = precision
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.on_error = on_error

    def fit(self, X: Sequence[PathLike] | None = None, y: Any = None) -> Embedder:
        """Resolve and load the backbone; records its spec and preprocessing (``spec_``, ``preprocessing_``)."""
        from featpipe.backbones import load_backbone, resolve_spec
        from featpipe.hardware import resolve_device

        if self.on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {self.on_error!r}")
        device = resolve_device(self.device)
        spec = resolve_spec(self.backbone, weights=self.weights, pretrained=self.pretrained, layer=self.layer,
                            image_size=self.image_size, precision=self.precision, seed=self.seed, device=device)
        loaded = load_backbone(spec, device)
        self.spec_ = spec.to_dict()
        self.preprocessing_ = dict(loaded.preprocessing)
        self._n_features_out = int(loaded.feature_dim)
        return self

    def transform(self, X: Sequence[PathLike]) -> np.ndarray:
        from featpipe.features.embed import embed_paths

        check_is_fitted(self, "spec_")
        paths = [str(p) for p in (X.tolist() if isinstance(X, np.ndarray) else X)]
        feats, ok, errors = embed_paths({**self.spec_, "preprocessing": self.preprocessing_}, paths,
                                        batch_size=self.batch_size, device=self.device)
        if not ok.all():
            if self.on_error == "raise":
                i = int(np.flatnonzero(~ok)[0])
                raise FeaturepipeError(f"{(~ok).sum()} of {len(paths)} images could not be embedded, e.g. "
                                       f"{paths[i]}: {errors[i]} (Embedder(on_error='nan') keeps them as NaN rows)")
            feats = feats.astype(np.float64)
            feats[~ok] = np.nan
        return feats

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "spec_")
        return np.asarray([f"feature{i}" for i in range(self._n_features_out)], dtype=object)
