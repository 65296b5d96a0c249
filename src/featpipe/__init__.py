"""featpipe: embed images once with a frozen backbone, fit and tune heads on cached features.

The job in Python (see :mod:`featpipe.api`)::

    import featpipe
    data = featpipe.load_dataset("photos/")
    cache = featpipe.embed(data, "efficientnet_lite0")
    runs = featpipe.fit(cache, "all", out="models")
    featpipe.report("models", out="report")
"""

from typing import Any

from featpipe.versions import FEATPIPE_VERSION as __version__

_API = ("Embedder", "embed", "fit", "load_dataset", "load_model", "report", "run")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # the API imports numpy and scikit-learn: loaded on first use, so `import featpipe.cli` stays fast
    if name in _API:
        from featpipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'featpipe' has no attribute {name!r}")
