"""Reading config sections that may be plain dicts (tests, YAML) or attribute objects (AjetConfig)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cfg_get(section: Any, path: str, default: Any = None) -> Any:
    """`cfg_get(cfg, "optim.lr", 1e-6)`: walk a dotted path; missing or None keys give `default`."""
    node = section
    for key in path.split("."):
        if node is None:
            return default
        if isinstance(node, Mapping):
            node = node.get(key)
        else:
            node = getattr(node, key, None)
    return default if node is None else node
