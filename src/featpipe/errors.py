"""Errors a user can act on. The CLI prints their message as one line and exits 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class FeaturepipeError(Exception):
    """Base class for every error featpipe reports without a traceback."""


class DatasetError(FeaturepipeError, ValueError):
    """A dataset that cannot be read as asked."""


class ImageError(FeaturepipeError):
    """One image could not be decoded; recorded as a failed row, never fatal for a run."""


class BackboneError(FeaturepipeError):
    """A backbone that cannot be built or whose weights are unavailable."""


class CacheError(FeaturepipeError):
    """A feature cache that is missing, incomplete, stale, locked or from another dataset."""


class HeadError(FeaturepipeError):
    """A head that cannot be fitted on the given data."""


class ModelError(FeaturepipeError):
    """A model bundle that cannot be loaded or used."""


class PipelineError(FeaturepipeError):
    """A pipeline file that is invalid (key, type, combination) or cannot run as written."""


class FinetuneError(FeaturepipeError):
    """A fine-tune run that cannot start or resume as asked."""


class FolderError(FeaturepipeError):
    """A folder featpipe must write into (cache, output, report) that cannot be created or written."""


class MissingExtraError(FeaturepipeError):
    """An optional feature whose packages are not installed; the message names the extra that installs them."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


# import name -> the distribution pip installs it from, where the two differ
_DISTRIBUTIONS = {"cv2": "opencv-python-headless", "ray": "ray[data]"}


def import_optional(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``; when it is missing, one line naming ``featpipe[extra]``."""
    try:
        importlib.import_module(module.split(".")[0])  # the package first: a submodule may be loaded already
        return importlib.import_module(module)
    except ImportError:
        dist = _DISTRIBUTIONS.get(module.split(".")[0], module.split(".")[0])
        raise MissingExtraError(f"{feature} needs {dist}, which is not installed: "
                                f"pip install 'featpipe[{extra}]'", extra) from None
