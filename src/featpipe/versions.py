"""The one version recorder: library versions written into caches, metrics and model bundles."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import warnings

import featpipe

# distribution name -> module to import for its __version__
_LIBRARIES = {
    "numpy": "numpy",
    "torch": "torch",
    "timm": "timm",
    "h5py": "h5py",
    "scikit-learn": "sklearn",
    "joblib": "joblib",
    "lightgbm": "lightgbm",
    "onnxruntime": "onnxruntime",
}
_METADATA_OK = {"scikit-learn", "joblib", "lightgbm", "onnxruntime"}


class FeaturepipeVersionWarning(UserWarning):
    """An artifact was saved with other library versions than the ones installed now."""


def library_versions() -> dict[str, str]:
    """featpipe, Python and every library whose version can change features or fitted heads."""
    out = {"featpipe": featpipe.__version__, "python": platform.python_version()}
    for dist, module in _LIBRARIES.items():
        # heads' libraries are not imported just for this (seconds of embed start-up); their
        # metadata version is their __version__ (torch's is not: it lacks the +build suffix)
        mod = sys.modules.get(module) if dist in _METADATA_OK else importlib.import_module(module)
        try:
            out[dist] = mod.__version__ if mod is not None else importlib.metadata.version(dist)
        except (ImportError, importlib.metadata.PackageNotFoundError):  # pragma: no cover - optional
            pass
    return out


def versions_diff(recorded: dict[str, str] | None) -> list[str]:
    """``"lib old -> new"`` for every recorded library whose installed version differs (Python ignored)."""
    now = library_versions()
    return [f"{k} {v} -> {now[k]}" for k, v in (recorded or {}).items()
            if k in now and k != "python" and now[k] != v]


def warn_if_versions_differ(recorded: dict[str, str] | None, what: str) -> None:
    diff = versions_diff(recorded)
    if diff:
        warnings.warn(f"{what} was saved with other library versions ({'; '.join(diff)}); "
                      "predictions may differ", FeaturepipeVersionWarning, stacklevel=3)
