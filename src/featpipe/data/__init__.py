"""Dataset sources: every one becomes a :class:`Manifest`."""

from featpipe.data.manifest import SPLITS, TASKS, Manifest

__all__ = ["Manifest", "SPLITS", "TASKS"]
