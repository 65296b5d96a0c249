"""Heads fitted on cached features: ``logistic``, ``mlp`` and ``lgbm`` (``all`` = every one).

Each head is a scikit-learn style estimator (hyper-parameters in ``__init__``, ``fit`` returns self,
learned state ends in ``_``) whose ``fit(X, y, X_val, y_val)`` tunes on validation only.
"""

from __future__ import annotations

from typing import Any

from featpipe.errors import HeadError
from featpipe.heads._base import BaseHead, ConstantProba, Preprocessor, balanced_weights, one_blas_thread
from featpipe.heads._lgbm import LGBMHead
from featpipe.heads._logistic import LogisticHead
from featpipe.heads._mlp import MLPHead

HEADS: dict[str, type[BaseHead]] = {"logistic": LogisticHead, "mlp": MLPHead, "lgbm": LGBMHead}
HEAD_CHOICES = (*HEADS, "all")


def head_names(name: str) -> list[str]:
    """``"all"`` -> every head name, else ``[name]`` (checked)."""
    if name == "all":
        return list(HEADS)
    if name not in HEADS:
        raise HeadError(f"unknown head {name!r}; expected one of {', '.join(HEAD_CHOICES)}")
    return [name]


STREAMING_SUFFIX = "-stream"


def make_head(name: str, **params: Any) -> BaseHead:
    """An unfitted head by name; ``params`` are its constructor arguments.

    ``<head>-stream`` is the out-of-core variant of a head (features read from disk in slabs).
    """
    if name.endswith(STREAMING_SUFFIX) and name.removesuffix(STREAMING_SUFFIX) in HEADS:
        from featpipe.heads._streaming import StreamingHead

        return StreamingHead(kind=name.removesuffix(STREAMING_SUFFIX), **params)
    (name,) = head_names(name) if name != "all" else (None,)
    if name is None:
        raise HeadError("make_head builds one head; use head_names('all') to loop over every head")
    return HEADS[name](**params)


__all__ = ["BaseHead", "ConstantProba", "HEADS", "HEAD_CHOICES", "LGBMHead", "LogisticHead", "MLPHead",
           "Preprocessor", "balanced_weights", "head_names", "make_head", "one_blas_thread"]
