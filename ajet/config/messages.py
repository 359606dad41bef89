"""Pydantic validation errors rewritten as messages about config keys.

Each line names the key path (`ajet.rollout.num_repeat`), the value found and the form expected; an
unknown key gets the closest valid one ("did you mean ...?", by difflib).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ajet.config.errors import ConfigError

ROOT_KEY = "ajet"


def config_error(exc: ValidationError, schema: type[BaseModel]) -> ConfigError:
    """One ConfigError for all of a validation's errors, one line per key path."""
    grouped: dict[str, list[ErrorDetails]] = {}
    for err in exc.errors():
        grouped.setdefault(_key_path(err, schema), []).append(err)

    lines = [_describe(path, errs, schema) for path, errs in grouped.items()]
    first_path, first_errs = next(iter(grouped.items()))
    message = lines[0] if len(lines) == 1 else "invalid config:\n  - " + "\n  - ".join(lines)
    return ConfigError(message, key=first_path, value=first_errs[0].get("input"))


def _key_path(err: ErrorDetails, schema: type[BaseModel]) -> str:
    """`ajet.a.b` from a pydantic error's loc, without the union-member tags pydantic appends."""
    parts = [ROOT_KEY]
    model: Any = schema
    for item in err["loc"]:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            model = None
            continue
        fields = _fields_by_key(model) if model is not None else {}
        if item not in fields:
            # The unknown key itself ends an extra_forbidden path; anything else is a union tag.
            if err["type"] == "extra_forbidden":
                parts.append(str(item))
            break
        parts.append(item)
        annotation = fields[item].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ".".join(parts)


def _fields_by_key(model: type[BaseModel]) -> dict[str, Any]:
    return {(field.alias or name): field for name, field in model.model_fields.items()}


def _describe(path: str, errs: list[ErrorDetails], schema: type[BaseModel]) -> str:
    err = errs[0]
    if err["type"] == "extra_forbidden":
        suggestion = _suggest(path, schema)
        if suggestion:
            return f"unknown key `{path}`; did you mean `{suggestion}`?"
        return f"unknown key `{path}` (valid keys here: {', '.join(_siblings(path, schema)) or 'none'})"
    if err["type"] == "missing":
        return f"`{path}` is required and missing"
    if err["type"] == "value_error":
        text = err["msg"].removeprefix("Value error, ")
        return text if text.startswith(ROOT_KEY + ".") else f"`{path}`: {text}"

    value = err.get("input")
    expected = " or ".join(dict.fromkeys(_expected(e["msg"]) for e in errs))
    if value is None:
        return f"`{path}` is required but is null; expected {expected}"
    return f"`{path}` = {_short_repr(value)} is invalid; expected {expected}"


def _expected(msg: str) -> str:
    for prefix in ("Input should be ", "Value should be "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg[:1].lower() + msg[1:]


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _model_at(path: str, schema: type[BaseModel]) -> type[BaseModel] | None:
    model: Any = schema
    for part in path.split(".")[1:]:
        fields = _fields_by_key(model)
        if part not in fields:
            return None
        annotation = fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _siblings(path: str, schema: type[BaseModel]) -> list[str]:
    parent = _model_at(path.rsplit(".", 1)[0], schema)
    return sorted(_fields_by_key(parent)) if parent is not None else []


def _suggest(path: str, schema: type[BaseModel]) -> str | None:
    """The closest valid key: a similar sibling, else a key of exactly this name in another section
    (a setting put in the wrong block); near-misses across sections would mostly be noise."""
    parent_path, _, name = path.rpartition(".")
    sibling = closest(name, _siblings(path, schema))
    if sibling:
        return f"{parent_path}.{sibling}"
    elsewhere = [full for full in _all_paths(schema, ROOT_KEY) if full.rsplit(".", 1)[1] == name]
    return min(elsewhere, key=len) if elsewhere else None


def closest(name: str, candidates: list[str]) -> str | None:
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _all_paths(model: type[BaseModel], prefix: str) -> list[str]:
    paths = []
    for key, field in _fields_by_key(model).items():
        full = f"{prefix}.{key}"
        paths.append(full)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_all_paths(annotation, full))
    return paths
