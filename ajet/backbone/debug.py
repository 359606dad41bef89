"""The one-process backbone: rollouts, judging and updates in this Python process, no Ray.

It wires the run (its log file, an optional Ray session for `--with-ray`) and hands over to the
backbone-independent loop in `ajet.training`. Breakpoints in workflows and judges work here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from ajet.backbone.options import LaunchOptions
from ajet.config import AjetConfig, ConfigError
from ajet.processes import sigterm_as_interrupt


def check_config(cfg: AjetConfig) -> None:
    """Stop on every setting one process cannot honour, naming the key and what it may be.

    Called by the launcher before anything heavy starts.
    """
    from ajet.algo import check_algorithm_names

    check_algorithm_names(cfg.trainer_common.algorithm)
    one_device = {
        "ajet.rollout.tensor_model_parallel_size": cfg.rollout.tensor_model_parallel_size,
        "ajet.trainer_common.nnodes": cfg.trainer_common.nnodes,
    }
    for key, value in one_device.items():
        if value != 1:
            raise ConfigError(
                f"{key} = {value!r}: the debug backbone runs in one process on one device, so it must be 1 "
                f"(pass {key.removeprefix('ajet.')}=1, or use --backbone verl to scale out)",
                key=key,
                value=value,
            )
    if cfg.trainer_common.n_gpus_per_node > 1:
        key = "ajet.trainer_common.n_gpus_per_node"
        raise ConfigError(
            f"{key} = {cfg.trainer_common.n_gpus_per_node}: the debug backbone trains on one device, so it "
            "must be 0 or 1 (pass trainer_common.n_gpus_per_node=1, or use --backbone verl for several GPUs)",
            key=key,
            value=cfg.trainer_common.n_gpus_per_node,
        )


def run(cfg: AjetConfig, options: LaunchOptions) -> int:
    from ajet.training import TrainingLoop, run_evaluation

    run_dir = options.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    _log_to_file(run_dir / "ajet.log")
    with contextlib.ExitStack() as stack:
        # A scheduler's SIGTERM (or `ajet --kill`) saves the last finished step, as Ctrl-C does.
        stack.enter_context(sigterm_as_interrupt())
        if options.with_ray:
            from ajet.ray_utils import ray_session

            stack.enter_context(ray_session(namespace="ajet"))
        if cfg.trainer_common.val_only:
            return asyncio.run(run_evaluation(cfg, run_dir, with_logview=options.with_logview, with_ray=options.with_ray))
        loop = TrainingLoop(cfg, run_dir, with_logview=options.with_logview, with_ray=options.with_ray)
        return asyncio.run(loop.run())


def _log_to_file(path: Path) -> None:
    root = logging.getLogger("ajet")
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
