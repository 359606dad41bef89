"""Typed fields for default.yaml keys the hand-written schema does not declare yet.

default.yaml is the key contract several modules add to while ajet/config/schema.py is written by
hand; a key added to the YAML must load before anyone writes its field. Such a key gets the type of
its default value (a null default accepts any value). tests/test_config.py fails while any key is
covered only this way, so the fallback never becomes the norm.
"""

from __future__ import annotations

import keyword
import logging
from typing import Any

from pydantic import BaseModel, Field, create_model

from ajet.config.schema import Section

logger = logging.getLogger("ajet.config")


def extend_schema(model: type[BaseModel], defaults: dict[str, Any]) -> type[BaseModel]:
    """`model`, subclassed where needed so that every key of `defaults` has a field.

    Nested sections are extended recursively; a model that is already complete is returned as is.
    """
    if model.model_config.get("extra") == "allow":
        return model
    by_key = {(field.alias or name): name for name, field in model.model_fields.items()}
    new_fields: dict[str, Any] = {}
    for key, value in defaults.items():
        if key in by_key:
            name = by_key[key]
            field = model.model_fields[name]
            sub = field.annotation
            if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
                extended = extend_schema(sub, value)
                if extended is not sub:
                    new_fields[name] = (extended, Field(alias=field.alias) if field.alias else ...)
            continue
        logger.debug("ajet config: default.yaml key %r has no typed field in %s", key, model.__name__)
        name, alias = _field_name(key)
        new_fields[name] = (_inferred_type(key, value), Field(alias=alias) if alias else ...)
    if not new_fields:
        return model
    return create_model(model.__name__, __base__=model, **new_fields)


def _inferred_type(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        fields = {}
        for sub_key, sub_value in value.items():
            name, alias = _field_name(sub_key)
            fields[name] = (_inferred_type(sub_key, sub_value), Field(alias=alias) if alias else ...)
        return create_model(f"{key.title().replace('_', '')}Config", __base__=Section, **fields)
    if value is None:
        return Any
    if isinstance(value, list):
        return list[Any]
    if isinstance(value, float):
        return float
    return type(value)  # bool, int, str


def _field_name(key: str) -> tuple[str, str | None]:
    if key.isidentifier() and not keyword.iskeyword(key) and not key.startswith("_"):
        return key, None
    safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in key).strip("_") or "field"
    return f"{safe}_", key
