"""The one exception type for a config the user must fix."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config mistake, explained in words the user can act on.

    The message always names the key path (e.g. `ajet.rollout.num_repeat`) where there is one, the
    value found and the form expected. `key` and `value` repeat the first of those for programs.
    The launcher prints `str(error)` without a traceback and exits with status 2.
    """

    def __init__(self, message: str, *, key: str = "", value: Any = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
