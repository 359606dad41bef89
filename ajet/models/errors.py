"""The one error model resolution raises, so callers can tell 'no such model' from a crash."""

from __future__ import annotations


class ModelResolutionError(RuntimeError):
    """`model.path` could not be turned into a loadable model directory; the message says why."""
