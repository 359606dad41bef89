"""The error every task reader raises for tasks it cannot read."""

from __future__ import annotations

from ajet.config.errors import ConfigError


class TaskReaderError(ConfigError):
    """Tasks cannot be read: a file, split, column or service is missing. The message says which.

    A ConfigError, because the fix is always in the config (a path, a split, a column mapping), so the
    launcher reports it the same way: one clean message, exit status 2.
    """
