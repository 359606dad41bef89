"""Nested-mapping helpers shared by the loader and the schema: deep merge and dotted-path access."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in: mappings merge key by key, anything else replaces.

    The result shares nothing with either argument (values are copied), so neither is modified
    now or by later edits of the result.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def pop_path(tree: dict[str, Any], path: str) -> tuple[bool, Any]:
    """Remove `a.b.c` from `tree` in place; returns (found, value). Empty parents are left as they are."""
    *parents, leaf = path.split(".")
    node: Any = tree
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    if not isinstance(node, dict) or leaf not in node:
        return False, None
    return True, node.pop(leaf)


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c` in `tree` in place, creating missing parent mappings.

    Raises KeyError(prefix) when a parent on the way holds a non-mapping value.
    """
    *parents, leaf = path.split(".")
    node = tree
    walked: list[str] = []
    for part in parents:
        walked.append(part)
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise KeyError(".".join(walked))
        node = child
    node[leaf] = value
