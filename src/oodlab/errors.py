"""Exceptions that oodlab raises for problems a user can fix."""

from __future__ import annotations


class OodlabError(ValueError):
    """A user-facing error: bad input, missing data, unknown name.

    The command line prints its message on one line, without a traceback, and exits non-zero.
    """


class NotFittedError(OodlabError, AttributeError):
    """Raised when a detector is used before :meth:`fit`."""
