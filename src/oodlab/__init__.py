"""oodlab: out-of-distribution detection for image classifiers."""

from oodlab.errors import NotFittedError, OodlabError

__version__ = "0.1.0"
__all__ = ["NotFittedError", "OodlabError", "__version__"]
