"""The one version recorder: library versions written into caches, metrics and model bundles."""

from __future__ import annotations

import platform
import warnings

FEATPIPE_VERSION = "0.1.0"  # FEATPIPE_VERSION; pyproject.toml's version says the same (a test checks)

# distributions whose version can change features or fitted heads (read from metadata: nothing is imported)
_LIBRARIES = ("numpy", "torch", "timm", "h5py", "scikit-learn", "joblib", "lightgbm", "onnxruntime")


class FeaturepipeVersionWarning(UserWarning):
    """An artifact was saved with other library versions than the ones installed now."""


def library_versions() -> dict[str, str]:
    """featpipe, Python and every library whose version can change features or fitted heads."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"featpipe": FEATPIPE_VERSION, "python": platform.python_version()}
    for dist in _LIBRARIES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - optional at run time
            pass
    return out


def versions_diff(recorded: dict[str, str] | None) -> list[str]:
    """``"lib old -> new"`` for every recorded library whose installed version differs (Python ignored)."""
    now = library_versions()

    def public(v: str) -> str:  # "2.14.1+cu130" and "2.14.1" are the same release
        return str(v).split("+")[0]

    return [f"{k} {v} -> {now[k]}" for k, v in (recorded or {}).items()
            if k in now and k != "python" and public(now[k]) != public(v)]


def warn_if_versions_differ(recorded: dict[str, str] | None, what: str) -> None:
    diff = versions_diff(recorded)
    if diff:
        warnings.warn(f"{what} was saved with other library versions ({'; '.join(diff)}); "
                      "predictions may differ", FeaturepipeVersionWarning, stacklevel=3)
