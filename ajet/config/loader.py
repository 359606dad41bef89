"""Loading a config: packaged defaults <- the user's YAML <- `key.path=value` overrides, then validation.

    cfg = load_config("tutorial/example_math_agent/math_agent.yaml", ["rollout.num_repeat=8"])

Every failure is a `ConfigError` whose message names the key path, the value and the expected form.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ajet.config.agentjet_compat import (
    IGNORED_TOP_LEVEL,
    TOP_LEVEL_ALIASES,
    translate_agentjet_keys,
)
from ajet.config.errors import ConfigError
from ajet.config.merge import deep_merge, set_path
from ajet.config.messages import ROOT_KEY, closest, config_error
from ajet.config.schema import AjetConfig

logger = logging.getLogger("ajet.config")

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")


def load_config(
    conf_path: str | Path | None,
    overrides: Iterable[str] = (),
    backbone: str | None = None,
) -> AjetConfig:
    """Build the validated config.

    conf_path: a YAML file with the top key `ajet:` (None: defaults only).
    overrides: `key.path=value` strings; the `ajet.` prefix is optional and values are YAML scalars
        (`4`, `true`, `null`, `[a, b]`).
    backbone: the `--backbone` flag; it wins over the YAML.
    """
    defaults = _packaged_defaults()
    user = _read_user_yaml(Path(conf_path)) if conf_path is not None else {}
    for item in overrides:
        _apply_override(user, item)
    if backbone is not None:
        user["backbone"] = backbone

    user, ignored, renames = translate_agentjet_keys(user, known=defaults)
    if renames:
        logger.info("ajet config: AgentJet key names read as ours: %s", ", ".join(renames))
    if ignored:
        logger.warning(
            "ajet config: ignoring AgentJet keys that have no effect in ajet: %s",
            ", ".join(f"{ROOT_KEY}.{path}" for path in ignored),
        )
    return validate_config(deep_merge(defaults, user))


def default_config() -> AjetConfig:
    """The packaged defaults alone, validated: what a component uses when no config is handed to it.

    A fresh copy each call (sections are mutable), built from one cached validation.
    """
    return _validated_defaults().model_copy(deep=True)


@lru_cache(maxsize=1)
def _validated_defaults() -> AjetConfig:
    return validate_config(_packaged_defaults())


def validate_config(merged: dict[str, Any]) -> AjetConfig:
    """Validate a complete `ajet:` block (defaults already merged in) into the typed config."""
    try:
        return AjetConfig.model_validate(merged)
    except ValidationError as exc:
        raise config_error(exc, AjetConfig) from None


# ---------------------------------------------------------------------------------------------------
# Reading YAML


@lru_cache(maxsize=1)
def _default_yaml_text() -> str:
    return DEFAULT_CONFIG_PATH.read_text(encoding="utf-8")


def _packaged_defaults() -> dict[str, Any]:
    return yaml.safe_load(_default_yaml_text())[ROOT_KEY]


def _read_user_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (looked in {Path.cwd()})", value=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with the top key `{ROOT_KEY}:`, got {type(data).__name__}")

    root = ROOT_KEY
    if ROOT_KEY not in data:
        root = next((key for key in data if key in TOP_LEVEL_ALIASES), ROOT_KEY)
        if root != ROOT_KEY:
            logger.info("ajet config: reading the `%s:` block of %s as `ajet:`", root, path)
    block = data.get(root)
    others = [key for key in data if key != root]

    sections = [key for key in others if key in AjetConfig.model_fields]
    if sections:
        raise ConfigError(
            f"{path}: {', '.join(map(repr, sections))} must be indented under `{ROOT_KEY}:` (two spaces), "
            f"not at the top level",
            key=sections[0],
        )
    typos = [key for key in others if closest(str(key), [ROOT_KEY]) and key not in IGNORED_TOP_LEVEL]
    if typos or (root not in data and others and not set(others) <= set(IGNORED_TOP_LEVEL)):
        raise ConfigError(
            f"{path}: no `{ROOT_KEY}:` block"
            + (
                f" (did you mean `{ROOT_KEY}:` for `{typos[0]}:`?)"
                if typos
                else f"; found only {', '.join(map(repr, others))}"
            ),
            key=str((typos or others)[0]),
        )
    noted = [key for key in others if key in IGNORED_TOP_LEVEL]
    if noted:
        logger.info(
            "ajet config: ignoring top-level %s in %s (Hydra composition is not used)",
            ", ".join(f"`{k}:`" for k in noted),
            path,
        )
    skipped = [key for key in others if key not in IGNORED_TOP_LEVEL]
    if skipped:
        logger.warning(
            "ajet config: ignoring top-level block(s) %s in %s: only `%s:` is read (verl settings go under `%s.verl:`)",
            ", ".join(f"`{k}:`" for k in skipped),
            path,
            ROOT_KEY,
            ROOT_KEY,
        )
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(
            f"{path}: `{ROOT_KEY}:` must hold a mapping of keys, got {block!r}", key=ROOT_KEY, value=block
        )
    return block


def _apply_override(user: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {item!r} must have the form key.path=value (e.g. rollout.num_repeat=4)", value=item
        )
    if key == ROOT_KEY or key.startswith(ROOT_KEY + "."):
        key = key[len(ROOT_KEY) + 1 :]
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key path", value=item)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not a YAML scalar: keep the text and let validation judge it
    try:
        set_path(user, key, value)
    except KeyError as exc:
        raise ConfigError(
            f"override {item!r}: `{ROOT_KEY}.{exc.args[0]}` holds a value, not a mapping of keys",
            key=f"{ROOT_KEY}.{key}",
            value=value,
        ) from None
