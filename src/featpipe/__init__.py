"""featpipe: embed images once with a frozen backbone, fit and tune heads on cached features."""

__version__ = "0.1.0"
