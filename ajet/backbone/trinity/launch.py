"""`--backbone=trinity`: the same YAML, workflow and judge, explored and trained by Trinity-RFT.

run(cfg, options):
  1. checks that trinity-rft imports (else prints the one line that installs it, returns 2) and,
     for a local Ray cluster, that the configured GPUs are there (else says so, returns 3);
  2. writes the run directory: the tasks as a Trinity taskset (`trinity/tasks/<split>.jsonl`), the
     effective ajet config, and the translated Trinity config (`trinity_config.yaml`), which
     Trinity's own `load_config` and `check_and_update` have accepted;
  3. starts or joins Ray (ajet.ray_utils; Trinity always runs on Ray, so `--with-ray` changes
     nothing) and runs Trinity's stage (explorer + trainer, or the benchmark for `val_only`) as
     `trinity run` would;
  4. reads Trinity's logs afterwards: the exit status is 1 when the stage failed or any of its
     actors logged an error (Trinity's own launcher exits 0 in both cases), with the first errors.

This module imports without trinity-rft, so the missing-dependency message can be shown.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ajet.backbone.options import LaunchOptions
from ajet.backbone.trinity.config_translation import EVAL_SPLIT, TRAIN_SPLIT, TrinityPaths, translate_config
from ajet.config import AjetConfig, ConfigError

logger = logging.getLogger(__name__)

EXIT_TRINITY_FAILED = 1
EXIT_MISSING_DEPENDENCIES = 2
EXIT_NO_GPU = 3

TRINITY_VERSION = "0.6.0"
INSTALL_LINE = (
    f'--backbone=trinity needs trinity-rft {TRINITY_VERSION}, which is not installed: pip install "ajet[trinity]" '
    "in an environment of its own (it needs transformers>=5.12.1, the verl extras <5.11; see docs/trinity.md)"
)
AJET_CONFIG_FILE = "ajet_config.yaml"
TRINITY_CONFIG_FILE = "trinity_config.yaml"


def trinity_missing(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> bool:
    return find_spec("trinity") is None


def gpu_problem(cfg: AjetConfig, environ: Mapping[str, str] | None = None, cuda_devices: int | None = None) -> str | None:
    """Why this node cannot host the run, or None. Checked only for a local Ray cluster (a joined
    one, RAY_ADDRESS, may have its GPUs on other nodes): Trinity would otherwise wait for GPUs that
    are not there."""
    from ajet.ray_utils import ray_address_from_env

    if ray_address_from_env(environ) is not None:
        return None
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = cfg.trainer_common.n_gpus_per_node
    if cuda_devices >= wanted:
        return None
    return (
        f"--backbone=trinity needs {wanted} NVIDIA GPU(s) on this node (ajet.trainer_common.n_gpus_per_node) "
        f"and found {cuda_devices}: Trinity's rollout engines are vLLM on CUDA. Set RAY_ADDRESS to join a "
        "GPU cluster, lower n_gpus_per_node, or use --backbone=debug (or verl with n_gpus_per_node=0) on a CPU."
    )


def run_paths(cfg: AjetConfig, run_dir: Path, *, model_path: str, has_validation: bool) -> TrinityPaths:
    trinity_dir = run_dir / "trinity"
    return TrinityPaths(
        model_path=model_path,
        tasks_dir=trinity_dir / "tasks",
        ajet_config_path=run_dir / AJET_CONFIG_FILE,
        checkpoint_root_dir=trinity_dir / "checkpoints",
        has_validation=has_validation,
    )


@dataclass
class PreparedRun:
    translated: dict[str, Any]  # what ajet wrote to trinity_config.yaml
    config: Any  # Trinity's Config after check_and_update
    config_path: Path


def prepare_run(cfg: AjetConfig, run_dir: Path) -> PreparedRun:
    """Write the run directory's files (module docstring, step 2) and validate them with Trinity."""
    from ajet.backbone.trinity.taskset import write_taskset
    from ajet.models import resolve_model_path
    from ajet.task_reader import build_task_reader

    run_dir.mkdir(parents=True, exist_ok=True)
    reader = build_task_reader(cfg)
    train_tasks, val_tasks = reader.train_tasks(), reader.val_tasks()
    paths = run_paths(cfg, run_dir, model_path=str(resolve_model_path(cfg.model.path)), has_validation=bool(val_tasks))
    write_taskset(train_tasks, paths.tasks_dir / f"{TRAIN_SPLIT}.jsonl")
    if val_tasks:
        write_taskset(val_tasks, paths.tasks_dir / f"{EVAL_SPLIT}.jsonl")
    paths.ajet_config_path.write_text(cfg.to_yaml(), encoding="utf-8")
    translated = translate_config(cfg, paths)
    config_path = run_dir / TRINITY_CONFIG_FILE
    config_path.write_text(yaml.safe_dump(translated, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return PreparedRun(translated=translated, config=validate_with_trinity(config_path), config_path=config_path)


def validate_with_trinity(config_path: Path) -> Any:
    """Trinity's Config from `config_path` through its own `load_config` (unknown keys are errors)
    and `check_and_update` (its validators); a rejection becomes a ConfigError naming the key."""
    from trinity.common.config import load_config

    try:
        config = load_config(str(config_path))
    except ValueError as exc:
        key = _omegaconf_key(str(exc))
        where = f"ajet.trinity.{key}" if key else "ajet.trinity"
        raise ConfigError(
            f"{where}: Trinity-RFT rejected the translated config ({_first_line(exc)}); fix or remove that "
            f"key under ajet.trinity (the translation is in {config_path})",
            key=where,
        ) from None
    try:
        return config.check_and_update()
    except (ValueError, AssertionError) as exc:
        raise ConfigError(
            f"ajet.trinity: Trinity-RFT's check_and_update rejected the translated config: {_first_line(exc)} "
            f"(the translation is in {config_path}; ajet.trinity.<key> overrides any of it)",
            key="ajet.trinity",
        ) from None


def dry_run_text(cfg: AjetConfig, *, find_spec: Callable[[str], Any] = importlib.util.find_spec) -> str:
    """The translated Trinity config for `--dry-run`, validated by Trinity when it is installed.

    Paths are those of a run directory to come (experiment_dir); nothing is written there. Trinity's
    validators create its checkpoint folders, so they run on a copy that points into a temporary one.
    """
    from ajet.config import resolve_experiment_dir
    from ajet.models import resolve_model_path

    run_dir = resolve_experiment_dir(cfg)
    paths = run_paths(cfg, run_dir, model_path=str(resolve_model_path(cfg.model.path)),
                      has_validation=_has_validation_split(cfg))
    translated = translate_config(cfg, paths)
    text = yaml.safe_dump(translated, sort_keys=False, allow_unicode=True).rstrip()
    if trinity_missing(find_spec):
        verdict = f"# not validated here: {INSTALL_LINE}"
    else:
        with tempfile.TemporaryDirectory(prefix="ajet-trinity-dry-run-") as tmp:
            scratch = replace(paths, checkpoint_root_dir=Path(tmp) / "checkpoints")
            path = Path(tmp) / TRINITY_CONFIG_FILE
            path.write_text(yaml.safe_dump(translate_config(cfg, scratch), sort_keys=False), encoding="utf-8")
            validated = validate_with_trinity(path)
        verdict = (
            f"# accepted by Trinity-RFT's load_config and check_and_update (mode {validated.mode}, "
            f"{validated.cluster.explorer_gpu_num} GPU(s) for rollouts, {validated.cluster.trainer_gpu_num} for training)"
        )
    return f"# translated Trinity-RFT config ({TRINITY_CONFIG_FILE})\n{text}\n{verdict}"


def run(
    cfg: AjetConfig,
    options: LaunchOptions,
    *,
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    run_stage: Callable[[Any], Any] | None = None,
) -> int:
    """Explore and train `cfg` with Trinity-RFT; returns the process exit code.

    `run_stage` (tests): replaces Trinity's `trinity.cli.launcher.run_stage(config) -> StageStatus`.
    """
    if trinity_missing(find_spec):
        print(INSTALL_LINE, file=sys.stderr)
        return EXIT_MISSING_DEPENDENCIES
    problem = gpu_problem(cfg)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_NO_GPU
    if options.with_ray:
        logger.info("trinity backbone: Trinity always runs on Ray; --with-ray changes nothing")

    from ajet.processes import RUN_ID_ENV, mark_this_run
    from ajet.ray_utils import ray_session

    prepared = prepare_run(cfg, options.run_dir)
    config = prepared.config
    env_vars = {
        **config.get_envs(),  # Trinity's log dir and level, read by every actor's logger
        RUN_ID_ENV: mark_this_run(),
        # Workflows are imported by dotted name from the launch directory, in every worker.
        "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p),
    }
    os.environ.update(env_vars)  # the driver's own Trinity loggers read them at import
    if run_stage is None:
        from trinity.cli.launcher import run_stage as trinity_run_stage

        run_stage = trinity_run_stage
    logger.info("trinity backbone: run directory %s, Trinity config %s", options.run_dir, prepared.config_path)
    with ray_session(runtime_env={"env_vars": env_vars}, namespace=config.ray_namespace):
        status = run_stage(config)
    return stage_exit_code(status, Path(config.log.save_dir))


def stage_exit_code(status: Any, log_dir: Path) -> int:
    """0 only when Trinity's stage succeeded and its logs hold no error; says why otherwise."""
    from ajet.backbone.trinity.logs import read_trinity_logs

    report = read_trinity_logs(log_dir)
    succeeded = bool(getattr(status, "success", False))
    if succeeded and report.ok:
        logger.info("trinity backbone: %s finished; %s", getattr(status, "stage", "the stage"), report.summary())
        return 0
    lines = []
    if not succeeded:
        error = getattr(status, "error", None)
        detail = f": {error.type_name}: {_first_line(error.message)}" if error is not None else ""
        lines.append(f"ajet: Trinity's {getattr(status, 'stage', '?')} stage failed{detail}")
    else:
        lines.append(f"ajet: Trinity's {getattr(status, 'stage', '?')} stage returned, but its actors logged errors")
    lines.append(report.summary())
    print("\n".join(lines), file=sys.stderr)
    return EXIT_TRINITY_FAILED


def _has_validation_split(cfg: AjetConfig) -> bool:
    tr = cfg.task_reader
    if tr.type == "huggingface_dat_repo":
        return tr.huggingface_dat_repo.validation_split is not None
    if tr.type == "dataset_file":
        return tr.dataset_file.validation.file_path is not None
    return tr.env_service.validation_split is not None


def _omegaconf_key(message: str) -> str | None:
    # OmegaConf's errors name the offending key on a `full_key: a.b.c` line.
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("full_key:"):
            return line.removeprefix("full_key:").strip() or None
    return None


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
