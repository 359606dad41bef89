"""Backbones wire a run together: `debug` (one process), `verl` (Ray + vLLM + verl's trainer) and
`trinity` (Ray + Trinity-RFT's explorer and trainer).

Each module offers `check_config(cfg)` (settings it cannot honour stop the run before anything heavy
starts) and `run(cfg, options) -> exit status`.
"""

from __future__ import annotations

from ajet.backbone.options import BackboneName, LaunchOptions
from ajet.config import AjetConfig


def check_config(cfg: AjetConfig, backbone: BackboneName) -> None:
    """Raise ConfigError for a setting `backbone` cannot honour (or an algorithm name nobody registered)."""
    from ajet.algo import check_algorithm_names

    check_algorithm_names(cfg.trainer_common.algorithm)
    if backbone == "debug":
        from ajet.backbone.debug import check_config as check_debug

        check_debug(cfg)
    elif backbone == "trinity":
        from ajet.backbone.trinity.config_translation import check_config as check_trinity

        check_trinity(cfg)


def dry_run_text(cfg: AjetConfig, backbone: BackboneName) -> str | None:
    """What `--dry-run` prints for `backbone` beyond the ajet config (the trinity translation), or None."""
    if backbone == "trinity":
        from ajet.backbone.trinity.launch import dry_run_text as trinity_dry_run

        return trinity_dry_run(cfg)
    return None


def run(cfg: AjetConfig, options: LaunchOptions) -> int:
    """Run the experiment described by `cfg` on `options.backbone`."""
    if options.backbone == "debug":
        from ajet.backbone.debug import run as run_debug

        return run_debug(cfg, options)
    if options.backbone == "trinity":
        from ajet.backbone.trinity.launch import run as run_trinity

        return run_trinity(cfg, options)
    from ajet.backbone.verl.launch import run as run_verl

    return run_verl(cfg, options)


__all__ = ["BackboneName", "LaunchOptions", "check_config", "dry_run_text", "run"]
