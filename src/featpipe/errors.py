"""Errors a user can act on. The CLI prints their message as one line and exits 2."""


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
