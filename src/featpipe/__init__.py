"""featpipe: embed images once with a frozen backbone, fit and tune heads on cached features.

The job in Python (see :mod:`featpipe.api`)::

    import featpipe
    data = featpipe.load_dataset("photos/")
    cache = featpipe.embed(data, "efficientnet_lite0")
    runs = featpipe.fit(cache, "all", out="models")
    featpipe.report("models", out="report")
"""

from featpipe.lazy import lazy_attributes
from featpipe.versions import FEATPIPE_VERSION as __version__

# the API imports numpy and scikit-learn: loaded on first use, so `import featpipe.cli` stays fast
_API = ("Embedder", "embed", "fit", "load_dataset", "load_model", "report", "run")
__all__ = ["__version__", *_API]
__getattr__ = lazy_attributes(__name__, dict.fromkeys(_API, "api"))
