"""One lazy-attribute hook (PEP 562's module ``__getattr__``) for the packages whose public names import
torch, numpy or scikit-learn: they load on first use, so ``import featpipe.cli`` and reading a pipeline
file stay light. Hand-written because the standard library has no table-driven form of it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps a public name to the submodule that defines
    it (``"_torch"``), or to ``"module:attribute"`` when the two names differ. A loaded name is kept in the
    package's namespace, so the hook runs once per name."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = names[name].partition(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attr or name)
        vars(importlib.import_module(package))[name] = value
        return value

    return __getattr__
