"""What the command line hands a backbone besides the config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BackboneName = Literal["debug", "verl"]


@dataclass(frozen=True)
class LaunchOptions:
    """The launch flags a backbone honours, and the run directory the launcher made.

    backbone: `--backbone` when given, else `ajet.backbone` (already resolved into the config).
    run_dir: the run's directory (config.yaml is in it; logs, metrics and checkpoints go there).
    with_logview: `--with-logview`: write token-level HTML pages of episodes.
    with_ray: `--with-ray` (debug backbone): run workflows in Ray workers.
    """

    backbone: BackboneName
    run_dir: Path
    with_logview: bool = False
    with_ray: bool = False
