"""The `ajet:` config: packaged defaults, the user's YAML, command-line overrides, validation.

from ajet.config import load_config
cfg = load_config("my.yaml", ["rollout.num_repeat=8"])
cfg.rollout.num_repeat, cfg.trainer_common.optim.lr
"""

from ajet.config.errors import ConfigError
from ajet.config.experiment_dir import resolve_experiment_dir
from ajet.config.loader import DEFAULT_CONFIG_PATH, default_config, load_config, validate_config
from ajet.config.schema import AjetConfig

__all__ = [
    "AjetConfig",
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "default_config",
    "load_config",
    "resolve_experiment_dir",
    "validate_config",
]
