"""The `ajet:` config as a Trinity-RFT config (a pure function; no Trinity import).

`translate_config(cfg, paths)` returns the nested dict of Trinity's YAML; `ajet.trinity:` is merged
over it last and wins. `validate_with_trinity` (needs trinity-rft) reads that dict back through
Trinity's own `load_config` (unknown keys are errors) and `Config.check_and_update` (Trinity's
validators fill derived fields: GPU split, buffer sizes, the verl trainer config).

The choices that are not one-to-one (docs/trinity.md has the whole table):
  - ajet's GRPO (one reward per episode, normalised within the task's group, every sample of the
    episode sharing its advantage) is Trinity's `multi_step_grpo`: its advantage function groups by
    task, takes each run's last experience's reward and broadcasts the run's advantage to all of its
    experiences. An ajet episode is one Trinity run, each of its samples one experience (`eid.step`).
  - one node with one GPU runs Trinity's `colocate` mode (explorer and trainer share the GPU); more
    GPUs run `both`, with half of them (at least one engine) for vLLM rollout engines.
  - tasks reach Trinity as a JSONL taskset the launcher writes (each row carries the ajet Task), read
    by Trinity's own file reader and run by ajet's workflow, named by its import path so every Ray
    worker resolves it without a plugin directory.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ajet.config import AjetConfig, ConfigError
from ajet.config.merge import deep_merge

# Trinity resolves a workflow type given as `module.Class` by importing it (its Registry).
WORKFLOW_TYPE = "ajet.backbone.trinity.workflow.AjetTrinityWorkflow"
TRAIN_TASKSET = "ajet_train"
EVAL_TASKSET = "ajet_validation"
EXPERIENCE_BUFFER = "ajet_experiences"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"
# The Task as JSON in each taskset row (see launch.write_taskset).
TASK_COLUMN = "ajet_task"
# workflow_args key naming the run's ajet config file, read by the workflow in every runner process.
CONFIG_PATH_ARG = "ajet_config_path"

# ajet's kl_loss_type -> Trinity's kl_loss_fn (same estimators: k1 = log ratio, k2 = half its square, ...).
KL_LOSS_FN = {"kl": "k1", "abs": "abs", "mse": "k2", "low_var_kl": "low_var_kl"}
# Seconds Trinity waits for a task beyond ajet's own episode timeout (the episode runner enforces that).
TASK_TIMEOUT_MARGIN_S = 60
# Trinity's dtype for the rollout engine when model.dtype is auto.
AUTO_ROLLOUT_DTYPE = "bfloat16"


@dataclass(frozen=True)
class TrinityPaths:
    """Where the launcher puts what Trinity reads.

    model_path: the resolved local model directory (or hub id) Trinity's vLLM and trainer load.
    tasks_dir: a directory with `train.jsonl` (and `validation.jsonl` when has_validation).
    ajet_config_path: the run's effective ajet config, read back by the workflow.
    checkpoint_root_dir: Trinity's checkpoint root; its job directory is `<root>/<project>/<name>`.
    """

    model_path: str
    tasks_dir: Path
    ajet_config_path: Path
    checkpoint_root_dir: Path
    has_validation: bool = False


def check_config(cfg: AjetConfig) -> None:
    """Stop on every ajet setting the Trinity translation cannot honour, with the key and the fix."""
    tc = cfg.trainer_common
    problems: list[tuple[str, Any, str]] = []
    if tc.algorithm.adv_estimator != "grpo":
        problems.append(("ajet.trainer_common.algorithm.adv_estimator", tc.algorithm.adv_estimator,
                         "the trinity backbone translates grpo only (to Trinity's multi_step_grpo); set it to grpo, "
                         "or pick another Trinity algorithm with ajet.trinity.algorithm.algorithm_type"))
    if not tc.algorithm.norm_adv_by_std_in_grpo:
        problems.append(("ajet.trainer_common.algorithm.norm_adv_by_std_in_grpo", False,
                         "Trinity's multi_step_grpo always divides by the group's std; set it to true"))
    if tc.n_gpus_per_node == 0:
        problems.append(("ajet.trainer_common.n_gpus_per_node", 0,
                         "Trinity has no CPU path (its rollout engine is vLLM on CUDA, its trainer uses cuda); "
                         "give the GPUs per node, or use --backbone=verl with n_gpus_per_node=0 on a CPU"))
    if tc.async_.max_staleness > 0:
        problems.append(("ajet.trainer_common.async.max_staleness", tc.async_.max_staleness,
                         "not translated to Trinity yet; set it to 0, or set Trinity's own "
                         "ajet.trinity.synchronizer.sync_offset / sync_style"))
    if tc.mini_batch_num != 1:
        problems.append(("ajet.trainer_common.mini_batch_num", tc.mini_batch_num,
                         "Trinity makes one optimizer step per train batch (its ppo_mini_batch_size is "
                         "buffer.train_batch_size); set it to 1, or set ajet.trinity.buffer.train_batch_size"))
    rc = tc.rollout_correction
    for key, value in (("tis_cap", rc.tis_cap), ("mask_low", rc.mask_low), ("mask_high", rc.mask_high)):
        if value is not None:
            problems.append((f"ajet.trainer_common.rollout_correction.{key}", value,
                             "not translated to Trinity yet; set it to null, or pass Trinity's "
                             "ajet.trinity.algorithm.rollout_correction"))
    if tc.resume not in ("auto", "never"):
        problems.append(("ajet.trainer_common.resume", tc.resume,
                         "Trinity resumes from its own job directory only; use auto (continue in "
                         "experiment_dir) or never"))
    if cfg.lora.lora_rank > 0 and not isinstance(cfg.lora.target_modules, str):
        problems.append(("ajet.lora.target_modules", cfg.lora.target_modules,
                         "Trinity's LoRA config takes one string; use all-linear"))
    if problems:
        key, value, fix = problems[0]
        raise ConfigError(f"{key} = {value!r}: {fix} (--backbone=trinity)", key=key, value=value)


def trinity_mode(cfg: AjetConfig) -> str:
    """`colocate` on one node with one GPU (what Trinity itself picks there), else `both`."""
    tc = cfg.trainer_common
    return "colocate" if tc.nnodes * tc.n_gpus_per_node == 1 else "both"


def rollout_engine_num(cfg: AjetConfig) -> int:
    """vLLM engines in `both` mode: half of the GPUs, at least one engine (trainer gets the rest)."""
    tc = cfg.trainer_common
    if trinity_mode(cfg) == "colocate":
        return 1
    total = tc.nnodes * tc.n_gpus_per_node
    return max(1, (total // 2) // cfg.rollout.tensor_model_parallel_size)


def translate_config(cfg: AjetConfig, paths: TrinityPaths, *, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Trinity's config (its YAML as a dict) for `cfg`, with `ajet.trinity:` merged over it.

    `environ` (default: os.environ) is read for one thing: whether SWANLAB_API_KEY is set.
    """
    tc, r = cfg.trainer_common, cfg.rollout
    engine_num = rollout_engine_num(cfg)
    taskset: dict[str, Any] = {
        "name": TRAIN_TASKSET,
        "storage_type": "file",
        "path": str(paths.tasks_dir),
        "split": TRAIN_SPLIT,
        "default_workflow_type": WORKFLOW_TYPE,
        "workflow_args": {CONFIG_PATH_ARG: str(paths.ajet_config_path)},
        "rollout_args": {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
                         "max_tokens": r.max_response_length_in_one_turn},
    }
    explorer_input: dict[str, Any] = {"taskset": taskset}
    if paths.has_validation and (tc.test_freq > 0 or tc.val_before_train or tc.val_only):
        vk = r.val_kwargs
        explorer_input["eval_tasksets"] = [
            dict(
                taskset,
                name=EVAL_TASKSET,
                split=EVAL_SPLIT,
                repeat_times=vk.num_repeat,
                rollout_args={"temperature": vk.temperature if vk.do_sample else 0.0, "top_p": vk.top_p,
                              "top_k": vk.top_k, "max_tokens": r.max_response_length_in_one_turn},
            )
        ]
    translated: dict[str, Any] = {
        "mode": "bench" if tc.val_only else trinity_mode(cfg),
        "project": cfg.project_name,
        "name": cfg.experiment_name,
        "checkpoint_root_dir": str(paths.checkpoint_root_dir),
        "continue_from_checkpoint": tc.resume != "never",
        "model": _model(cfg, paths.model_path),
        "cluster": {"node_num": tc.nnodes, "gpu_per_node": tc.n_gpus_per_node},
        "algorithm": _algorithm(cfg),
        "buffer": {
            "batch_size": cfg.data.train_batch_size,
            "total_epochs": tc.total_epochs,
            "total_steps": tc.total_training_steps,
            "explorer_input": explorer_input,
            "trainer_input": {"experience_buffer": {"name": EXPERIENCE_BUFFER, "storage_type": "queue"}},
        },
        "explorer": {
            # Each runner plays one task's num_repeat episodes at once; max_env_worker bounds them all.
            "runner_per_model": max(1, r.max_env_worker // (r.num_repeat * engine_num)),
            "concurrent_mode": "asynchronous",
            "max_timeout": int(math.ceil(r.episode_timeout)) + TASK_TIMEOUT_MARGIN_S,
            # ajet already turns a failed episode into a zero-reward one; a retry would play it twice.
            "max_retry_times": 0,
            "eval_interval": tc.test_freq if tc.test_freq > 0 else max(1, tc.total_training_steps or 1_000_000),
            "eval_on_startup": tc.val_before_train,
            "rollout_model": {
                "engine_type": "vllm",
                "engine_num": engine_num,
                "tensor_parallel_size": r.tensor_model_parallel_size,
                "gpu_memory_utilization": r.gpu_memory_utilization,
                "dtype": AUTO_ROLLOUT_DTYPE if cfg.model.dtype == "auto" else cfg.model.dtype,
                "seed": cfg.data.seed,
                # ajet's engine calls the server's completions endpoint with token ids; Trinity's
                # own history recording (its chat endpoint) is not used.
                "enable_openai_api": True,
                "enable_history": False,
            },
        },
        "trainer": {
            "trainer_type": "verl",
            "trainer_strategy": "fsdp2",
            "save_interval": tc.save_freq,
            "max_checkpoints_to_keep": tc.max_checkpoints_to_keep or 0,
            "grad_clip": _grad_clip(cfg),
            "total_steps": tc.total_training_steps,
            "trainer_config": {"actor": {"ppo_epochs": tc.ppo_epochs}},
        },
        "synchronizer": {"sync_interval": 1, "sync_offset": 0},
        "monitor": _monitor(cfg, os.environ if environ is None else environ),
        "log": {"level": "INFO"},
    }
    return deep_merge(translated, copy.deepcopy(cfg.trinity))


def _model(cfg: AjetConfig, model_path: str) -> dict[str, Any]:
    r = cfg.rollout
    model: dict[str, Any] = {
        "model_path": model_path,
        "max_model_len": r.max_model_len,
        "max_prompt_tokens": cfg.data.max_prompt_length,
        "max_response_tokens": r.max_response_length_in_one_turn,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
    }
    if cfg.lora.lora_rank > 0:
        model["lora_configs"] = [
            {"name": "ajet", "lora_rank": cfg.lora.lora_rank, "lora_alpha": int(cfg.lora.lora_alpha),
             "target_modules": cfg.lora.target_modules}
        ]
    return model


def _algorithm(cfg: AjetConfig) -> dict[str, Any]:
    tc = cfg.trainer_common
    optim = tc.optim
    policy_loss: dict[str, Any] = {
        "clip_range_low": tc.clip_ratio_low,
        "clip_range_high": tc.clip_ratio_high,
        "loss_agg_mode": tc.algorithm.loss_agg_mode,
    }
    if tc.clip_ratio_c is not None:
        policy_loss["clip_ratio_c"] = tc.clip_ratio_c
    return {
        "algorithm_type": "multi_step_grpo",
        "repeat_times": cfg.rollout.num_repeat,
        "advantage_fn_args": {"epsilon": 1e-6, "enable_step_norm": False, "std_cal_level": "group"},
        "policy_loss_fn_args": policy_loss,
        "loss_agg_mode": tc.algorithm.loss_agg_mode,
        "kl_loss_fn": KL_LOSS_FN[tc.kl_loss_type] if tc.use_kl_loss else "none",
        "kl_loss_fn_args": {"kl_coef": tc.kl_loss_coef},
        "entropy_loss_fn_args": {"entropy_coef": tc.entropy_coeff},
        "optimizer": {
            "lr": optim.lr,
            "betas": list(optim.betas),
            "weight_decay": optim.weight_decay,
            "lr_warmup_steps": optim.lr_warmup_steps,
            "clip_grad": _grad_clip(cfg),
        },
    }


def _grad_clip(cfg: AjetConfig) -> float:
    # ajet's null (no clipping) as a bound no gradient norm reaches; Trinity's field takes a number.
    clip = cfg.trainer_common.optim.grad_clip
    return float(clip) if clip is not None else 1.0e9


def _monitor(cfg: AjetConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    # Trinity takes one monitor and logs to the console itself. Its SwanLab monitor logs in to the
    # cloud and raises without SWANLAB_API_KEY, so SwanLab only with that key, else TensorBoard files.
    tc = cfg.trainer_common
    if "swanlab" in tc.logger and tc.swanlab_mode in ("auto", "online") and environ.get("SWANLAB_API_KEY"):
        return {"monitor_type": "swanlab"}
    return {"monitor_type": "tensorboard"}
