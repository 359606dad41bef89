"""Typed configs for tests and benchmarks: the packaged defaults plus `key.path=value` overrides.

    cfg = make_config("trainer_common.optim.lr=1e-3", "lora.lora_rank=4")
    PolicyTrainer(model, tokenizer, cfg.trainer_common, cfg.lora)

The same loader and validation as a run (`ajet.config.load_config`), so a test never builds a config a
user could not write.
"""

from __future__ import annotations

from pathlib import Path

from ajet.config import AjetConfig, load_config


def make_config(*overrides: str, conf: str | Path | None = None) -> AjetConfig:
    """The validated config of `conf` (None: defaults only) with `overrides` applied in order."""
    return load_config(conf, list(overrides))
