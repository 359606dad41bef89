"""Backbones wire a run together: `debug` (one process) and `verl` (Ray + vLLM + verl's trainer).

Each module offers `check_config(cfg)` (settings it cannot honour stop the run before anything heavy
starts) and `run(cfg, options) -> exit status`.
"""

from __future__ import annotations

from ajet.backbone.options import BackboneName, LaunchOptions
from ajet.config import AjetConfig


def check_config(cfg: AjetConfig, backbone: BackboneName) -> None:
    """Raise ConfigError for a setting `backbone` cannot honour."""
    if backbone == "debug":
        from ajet.backbone.debug import check_config as check_debug

        check_debug(cfg)


def run(cfg: AjetConfig, options: LaunchOptions) -> int:
    """Run the experiment described by `cfg` on `options.backbone`."""
    if options.backbone == "debug":
        from ajet.backbone.debug import run as run_debug

        return run_debug(cfg, options)
    from ajet.backbone.verl.launch import run as run_verl

    return run_verl(cfg, options)


__all__ = ["BackboneName", "LaunchOptions", "check_config", "run"]
