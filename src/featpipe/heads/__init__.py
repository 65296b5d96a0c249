"""Heads fitted on cached features: ``logistic``, ``mlp`` and ``lgbm`` (``all`` = every one).

Each head is a scikit-learn style estimator (hyper-parameters in ``__init__``, ``fit`` returns self,
learned state ends in ``_``) whose ``fit(X, y, X_val, y_val)`` tunes on validation only. Beside them:
``metrics`` (the one metric table), ``thresholds`` and ``model`` (``FeaturepipeModel``: head + thresholds +
backbone spec). The head classes load on first use, so the command line and ``heads.metrics`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featpipe.errors import HeadError
from featpipe.lazy import lazy_attributes

if TYPE_CHECKING:
    from featpipe.heads._base import BaseHead

# public name -> (module, class); loaded by __getattr__ on first use
_LAZY = {
    "BaseHead": "_base", "ConstantProba": "_base", "Preprocessor": "_base", "balanced_weights": "_base",
    "one_blas_thread": "_base", "DEFAULT_REFIT": "_base", "LogisticHead": "_logistic", "MLPHead": "_mlp",
    "MLPWeights": "_mlp", "LGBMHead": "_lgbm",
}
_HEAD_CLASSES = {"logistic": "LogisticHead", "mlp": "MLPHead", "lgbm": "LGBMHead"}
HEAD_CHOICES = (*_HEAD_CLASSES, "all")


_load = lazy_attributes(__name__, _LAZY)


def __getattr__(name: str) -> Any:
    if name == "HEADS":  # name -> head class
        return {k: _load(v) for k, v in _HEAD_CLASSES.items()}
    return _load(name)


def head_names(name: str) -> list[str]:
    """``"all"`` -> every head name, else ``[name]`` (checked)."""
    if name == "all":
        return list(_HEAD_CLASSES)
    if name not in _HEAD_CLASSES:
        raise HeadError(f"unknown head {name!r}; expected one of {', '.join(HEAD_CHOICES)}")
    return [name]


STREAMING_SUFFIX = "-stream"


def make_head(name: str, **params: Any) -> BaseHead:
    """An unfitted head by name; ``params`` are its constructor arguments.

    ``<head>-stream`` is the out-of-core variant of a head (features read from disk in slabs).
    """
    if name.endswith(STREAMING_SUFFIX) and name.removesuffix(STREAMING_SUFFIX) in _HEAD_CLASSES:
        from featpipe.heads._streaming import StreamingHead

        return StreamingHead(kind=name.removesuffix(STREAMING_SUFFIX), **params)
    (name,) = head_names(name) if name != "all" else (None,)
    if name is None:
        raise HeadError("make_head builds one head; use head_names('all') to loop over every head")
    return __getattr__(_HEAD_CLASSES[name])(**params)


__all__ = ["DEFAULT_REFIT", "BaseHead", "ConstantProba", "HEADS", "HEAD_CHOICES", "LGBMHead", "LogisticHead", "MLPHead", "MLPWeights",
           "Preprocessor", "balanced_weights", "head_names", "make_head", "one_blas_thread"]
