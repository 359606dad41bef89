"""Where a run writes its outputs: `trainer_common.experiment_dir`, with "auto" made concrete."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ajet.config.schema import AjetConfig

AUTO = "auto"
RUNS_ROOT = Path("runs")


def resolve_experiment_dir(cfg: AjetConfig, now: datetime | None = None) -> Path:
    """Return the run directory as an absolute path and store it back in the config.

    "auto" becomes `./runs/<experiment_name>-<YYYYmmdd-HHMMSS>` under the working directory; a
    relative path is taken from the working directory. Writing the result back makes every later
    caller (backbone, trainer, the saved config.yaml) see the same directory. Nothing is created.
    """
    configured = cfg.trainer_common.experiment_dir
    if configured == AUTO:
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        path = RUNS_ROOT / f"{cfg.experiment_name}-{stamp}"
    else:
        path = Path(configured).expanduser()
    path = path.resolve()
    cfg.trainer_common.experiment_dir = str(path)
    return path
