"""The verl backbone on the CPU: config translation, the engine over verl's server-manager interface,
the agent-loop adapter, the batch conversion (checked against verl's own agent-loop padding and
DataProto), the launcher's missing-dependency message and the shared Ray start-up.

No GPU and no vLLM: the server manager is a fake with verl's `generate(request_id, prompt_ids=...,
sampling_params=...) -> TokenOutput` interface, backed by ajet's ScriptedEngine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

verl = pytest.importorskip("verl", reason="verl is not installed (pip install 'ajet[verl]')")

from proxy_helpers import ADD_TOOL, tokenizer, tool_call_text

from ajet.backbone import LaunchOptions
from ajet.backbone.verl.batch import samples_to_dataproto, split_sample
from ajet.backbone.verl.config_translation import (
    AGENT_LOOP_NAME,
    VerlConfigError,
    compose_verl_config,
    translate_config,
)
from ajet.backbone.verl.server_engine import VerlServerEngine, from_verl_sampling_params, to_verl_sampling_params
from ajet.config import load_config
from ajet.engine.base import SamplingParams
from ajet.engine.scripted import ScriptedEngine, scripted_logprob
from ajet.judge.base import BaseJudge
from ajet.schema import Sample, Task, WorkflowOutput
from ajet.workflow import Workflow

REPO = Path(__file__).resolve().parents[1]
MATH_YAML = REPO / "tutorial" / "example_math_agent" / "math_agent.yaml"


def math_cfg(*overrides: str):
    return load_config(MATH_YAML, ["model.path=builtin:tiny-qwen2-random", *overrides])


# -- config translation -----------------------------------------------------------------------------


def test_translation_of_the_math_agent_yaml_sets_verl_keys():
    cfg = math_cfg(
        "rollout.num_repeat=6",
        "rollout.temperature=0.7",
        "rollout.top_k=20",
        "rollout.tensor_model_parallel_size=2",
        "rollout.gpu_memory_utilization=0.45",
        "data.train_batch_size=8",
        "data.max_prompt_length=1000",
        "data.max_response_length=3000",
        "trainer_common.mini_batch_num=4",
        "trainer_common.micro_batch_size=3",
        "trainer_common.gradient_checkpointing=true",
        "trainer_common.optim.lr=3e-6",
        "trainer_common.optim.weight_decay=0.05",
        "trainer_common.optim.grad_clip=0.5",
        "trainer_common.use_kl_loss=true",
        "trainer_common.kl_loss_coef=0.01",
        "trainer_common.entropy_coeff=0.002",
        "trainer_common.n_gpus_per_node=4",
        "trainer_common.nnodes=2",
        "trainer_common.total_training_steps=3",
        "trainer_common.save_freq=0",
        "trainer_common.test_freq=0",
        "trainer_common.resume=never",
        "trainer_common.logger=console,jsonl,swanlab",
        "trainer_common.rollout_correction.tis_cap=2.5",
        "trainer_common.rollout_correction.mask_low=0.5",
        "trainer_common.rollout_correction.mask_high=2.0",
        "lora.lora_rank=16",
        "lora.lora_alpha=32",
    )
    v = translate_config(cfg, model_path="/models/m", experiment_dir="/runs/x", train_files="/runs/x/train.parquet")

    assert v["algorithm"]["adv_estimator"] == "grpo"
    assert v["algorithm"]["norm_adv_by_std_in_grpo"] is True
    rc = v["algorithm"]["rollout_correction"]
    assert (rc["rollout_is"], rc["rollout_is_threshold"]) == ("token", 2.5)
    assert (rc["rollout_rs"], rc["rollout_rs_threshold"]) == ("token_k1", "0.5_2.0")

    rollout = v["actor_rollout_ref"]["rollout"]
    assert rollout["n"] == 6 and rollout["mode"] == "async" and rollout["name"] == "vllm"
    assert rollout["agent"]["default_agent_loop"] == AGENT_LOOP_NAME
    assert (rollout["temperature"], rollout["top_p"], rollout["top_k"]) == (0.7, 1.0, 20)
    assert (rollout["prompt_length"], rollout["response_length"]) == (1000, 3000)
    assert rollout["tensor_model_parallel_size"] == 2 and rollout["gpu_memory_utilization"] == 0.45
    assert rollout["calculate_log_probs"] is True
    assert rollout["val_kwargs"]["temperature"] == 0.0 and rollout["val_kwargs"]["n"] == 1

    actor = v["actor_rollout_ref"]["actor"]
    assert actor["ppo_mini_batch_size"] == 2  # 8 prompts / 4 optimizer steps
    assert actor["ppo_micro_batch_size_per_gpu"] == 3
    assert actor["optim"]["lr"] == 3e-6 and actor["optim"]["weight_decay"] == 0.05
    assert actor["optim"]["clip_grad"] == 0.5
    assert (actor["clip_ratio_low"], actor["clip_ratio_high"]) == (0.2, 0.28)
    assert actor["loss_agg_mode"] == "token-mean"
    assert actor["use_kl_loss"] is True and actor["kl_loss_coef"] == 0.01 and actor["kl_loss_type"] == "low_var_kl"
    assert actor["entropy_coeff"] == 0.002

    model = v["actor_rollout_ref"]["model"]
    assert model["path"] == "/models/m" and model["enable_gradient_checkpointing"] is True
    assert (model["lora_rank"], model["lora_alpha"], model["target_modules"]) == (16, 32.0, "all-linear")

    data = v["data"]
    assert (data["train_batch_size"], data["max_prompt_length"], data["max_response_length"]) == (8, 1000, 3000)
    assert data["train_files"] == "/runs/x/train.parquet" and "val_files" not in data

    trainer = v["trainer"]
    assert (trainer["n_gpus_per_node"], trainer["nnodes"]) == (4, 2)
    assert trainer["total_training_steps"] == 3 and trainer["total_epochs"] == 1
    assert trainer["save_freq"] > 10**6  # "only at the end": verl saves at the last step for any positive freq
    assert trainer["test_freq"] == -1
    assert trainer["resume_mode"] == "disable"
    assert trainer["logger"] == ["console", "file", "swanlab"]
    assert trainer["default_local_dir"] == "/runs/x/checkpoints"
    assert (trainer["project_name"], trainer["experiment_name"]) == ("example_math_agent", "math_agent")


def test_verl_section_passes_through_and_wins():
    cfg = math_cfg("rollout.num_repeat=4")
    cfg.verl = {
        "actor_rollout_ref": {"rollout": {"n": 16, "agent": {"num_workers": 2}}, "actor": {"fsdp_config": {"param_offload": True}}},
        "trainer": {"val_before_train": True},
    }
    v = translate_config(cfg)
    assert v["actor_rollout_ref"]["rollout"]["n"] == 16
    assert v["actor_rollout_ref"]["rollout"]["agent"] == {"default_agent_loop": AGENT_LOOP_NAME, "num_workers": 2}
    assert v["actor_rollout_ref"]["actor"]["fsdp_config"] == {"param_offload": True}
    assert v["actor_rollout_ref"]["actor"]["optim"]["lr"] == cfg.trainer_common.optim.lr  # siblings kept
    assert v["trainer"]["val_before_train"] is True


def test_translation_resume_path_and_mask_band_with_one_end():
    v = translate_config(math_cfg("trainer_common.resume=/ckpt/global_step_5", "trainer_common.rollout_correction.mask_high=3.0"))
    assert v["trainer"]["resume_mode"] == "resume_path" and v["trainer"]["resume_from_path"] == "/ckpt/global_step_5"
    rc = v["algorithm"]["rollout_correction"]
    assert rc["rollout_is"] is None and rc["rollout_rs"] == "token_k1" and rc["rollout_rs_threshold"] == "0.0_3.0"


def test_translation_rejects_a_batch_verl_cannot_split():
    with pytest.raises(VerlConfigError, match="divisible"):
        translate_config(math_cfg("data.train_batch_size=3", "trainer_common.mini_batch_num=2"))


def test_translation_composes_with_verl_defaults_in_struct_mode():
    from omegaconf import OmegaConf
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig

    cfg = math_cfg("trainer_common.rollout_correction.tis_cap=2.0", "lora.lora_rank=8")
    composed = compose_verl_config(translate_config(cfg, train_files="/t.parquet", val_files="/v.parquet"))
    assert composed.actor_rollout_ref.rollout.n == cfg.rollout.num_repeat
    assert composed.actor_rollout_ref.model.lora_rank == 8
    assert composed.algorithm.rollout_correction.rollout_is == "token"
    # verl's own typed configs accept what we produced (resolved first, as verl's TaskRunner does)
    OmegaConf.resolve(composed)
    rollout = omega_conf_to_dataclass(composed.actor_rollout_ref.rollout, dataclass_type=RolloutConfig)
    assert rollout.agent.default_agent_loop == AGENT_LOOP_NAME and rollout.calculate_log_probs
    algo = omega_conf_to_dataclass(composed.algorithm, dataclass_type=AlgoConfig)
    assert algo.adv_estimator == "grpo"
    assert OmegaConf.select(composed, "trainer.use_v1") is False

    cfg.verl = {"trainer": {"no_such_verl_key": 1}}
    with pytest.raises(VerlConfigError, match=r"ajet\.verl\.trainer\.no_such_verl_key: verl 0\.9\.1 has no such setting"):
        compose_verl_config(translate_config(cfg))
    cfg.verl = {"actor_rollout_ref": {"rollout": {"temprature": 0.5}}}
    with pytest.raises(VerlConfigError, match=r"Did you mean `actor_rollout_ref\.rollout\.temperature`"):
        compose_verl_config(translate_config(cfg))


ALGORITHMS = {
    # name: (ajet overrides, verl adv_estimator, verl norm_adv_by_std_in_grpo, verl loss_mode)
    "grpo": ([], "grpo", True, "vanilla"),
    "grpo-no-std": (["trainer_common.algorithm.norm_adv_by_std_in_grpo=false"], "grpo", False, "vanilla"),
    "dr_grpo": (["trainer_common.algorithm.adv_estimator=dr_grpo",
                 "trainer_common.algorithm.loss_agg_mode=seq-mean-token-sum-norm"], "grpo", False, "vanilla"),
    "rloo": (["trainer_common.algorithm.adv_estimator=rloo"], "rloo", True, "vanilla"),
    "reinforce_plus_plus_baseline": (["trainer_common.algorithm.adv_estimator=reinforce_plus_plus_baseline"],
                                     "reinforce_plus_plus_baseline", True, "vanilla"),
    "gspo": (["trainer_common.algorithm.policy_loss.loss_mode=gspo",
              "trainer_common.algorithm.loss_agg_mode=seq-mean-token-mean"], "grpo", True, "gspo"),
    "cispo": (["trainer_common.algorithm.policy_loss.loss_mode=cispo"], "grpo", True, "cispo"),
}


def _composed_algorithm(cfg):
    from omegaconf import OmegaConf
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass

    composed = compose_verl_config(translate_config(cfg, train_files="/t.parquet", val_files="/v.parquet"))
    OmegaConf.resolve(composed)
    algo = omega_conf_to_dataclass(composed.algorithm, dataclass_type=AlgoConfig)
    actor = omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    return composed, algo, actor


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_name_composes_onto_verls_own_implementation(name):
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn

    overrides, estimator, norm, loss_mode = ALGORITHMS[name]
    cfg = math_cfg(*overrides)
    _, algo, actor = _composed_algorithm(cfg)
    assert (algo.adv_estimator, algo.norm_adv_by_std_in_grpo) == (estimator, norm)
    assert actor.policy_loss.loss_mode == loss_mode and actor.loss_agg_mode == cfg.trainer_common.algorithm.loss_agg_mode
    get_adv_estimator_fn(algo.adv_estimator), get_policy_loss_fn(actor.policy_loss.loss_mode)  # verl has both
    pl = cfg.trainer_common.algorithm.policy_loss
    expected_clip = {"vanilla": (0.2, 0.28), "gspo": (pl.gspo_clip_ratio_low, pl.gspo_clip_ratio_high),
                     "cispo": (pl.cispo_clip_ratio_low, pl.cispo_clip_ratio_high)}[loss_mode]
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == pytest.approx(expected_clip)
    if name == "dr_grpo":
        assert actor.loss_scale_factor == cfg.data.max_response_length
    assert not algo.filter_groups or not algo.filter_groups.enable


def _verl_advantages(name: str, rewards, index, response_length: int):
    import numpy as np
    import torch
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    overrides, estimator, norm, _ = ALGORITHMS[name]
    b = len(rewards)
    token_rewards = torch.zeros(b, response_length)
    token_rewards[:, -1] = torch.tensor(rewards)
    kwargs = {"norm_adv_by_std_in_grpo": norm} if estimator == "grpo" else {}
    adv, _ = get_adv_estimator_fn(estimator)(
        token_level_rewards=token_rewards, response_mask=torch.ones(b, response_length), index=np.array(index), **kwargs
    )
    return adv[:, 0], math_cfg(*overrides).trainer_common.algorithm


@pytest.mark.parametrize("name,response_length", [("grpo", 3), ("grpo-no-std", 3), ("dr_grpo", 3), ("rloo", 3),
                                                    ("reinforce_plus_plus_baseline", 1)])
def test_ajets_estimators_compute_what_verls_compute(name, response_length):
    """(verl's reinforce_plus_plus_baseline whitens over tokens, ajet's over episodes: equal for
    one-token responses.)"""
    import torch

    from ajet.algo import advantage_estimator

    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.25, 0.25, 0.0, 2.0]
    index = ["a", "a", "a", "a", "b", "b", "b", "c", "c"]
    verl_adv, algorithm = _verl_advantages(name, rewards, index, response_length)
    ours = advantage_estimator(algorithm.adv_estimator)(torch.tensor(rewards), index, algorithm)
    torch.testing.assert_close(ours, verl_adv.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "gspo", "cispo"])
def test_ajets_policy_losses_compute_what_verls_compute_with_the_translated_actor_config(name):
    import torch
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from ajet.algo import policy_loss_fn

    overrides = ALGORITHMS[name][0]
    cfg = math_cfg(*overrides, "data.max_response_length=8")
    _, _, actor = _composed_algorithm(cfg)
    actor.global_batch_info["loss_scale_factor"] = actor.loss_scale_factor  # as verl's ppo_loss sets it
    torch.manual_seed(0)
    old = -torch.rand(3, 5) * 2
    base = (old + torch.randn(3, 5) * 0.3).detach()
    adv = torch.randn(3, 1).expand(3, 5).contiguous()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.float32)

    verl_logp = base.clone().requires_grad_(True)
    verl_loss, _ = get_policy_loss_fn(actor.policy_loss.loss_mode)(
        old_log_prob=old, log_prob=verl_logp, advantages=adv, response_mask=mask,
        loss_agg_mode=actor.loss_agg_mode, config=actor,
    )
    verl_loss.backward()
    ours_logp = base.clone().requires_grad_(True)
    ours_loss, _ = policy_loss_fn(cfg.trainer_common.algorithm.policy_loss.loss_mode)(
        ours_logp, old, adv, mask, cfg.trainer_common
    )
    ours_loss.backward()
    torch.testing.assert_close(ours_loss, verl_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_logp.grad, verl_logp.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_staleness,trainer_mode", [(0, "sync"), (2, "colocate_async")])
def test_dynamic_sampling_selects_verls_v1_group_filter(max_staleness, trainer_mode):
    from omegaconf import OmegaConf

    # lora_rank=0: with LoRA, verl's validate_config imports its vLLM rollout, which needs vLLM installed.
    cfg = math_cfg(
        "trainer_common.algorithm.filter_groups.enable=true",
        f"trainer_common.async.max_staleness={max_staleness}",
        "lora.lora_rank=0",
    )
    composed, algo, _ = _composed_algorithm(cfg)
    assert OmegaConf.select(composed, "trainer.use_v1") is True and composed.trainer.v1.trainer_mode == trainer_mode
    assert algo.filter_groups.enable and algo.filter_groups.metric == "reward"
    assert algo.filter_groups.max_num_gen_batches == cfg.trainer_common.algorithm.filter_groups.max_num_gen_batches
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config=composed, use_reference_policy=need_reference_policy(composed), use_critic=need_critic(composed))


def test_a_null_dual_clip_is_off_on_verl_too():
    import torch
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    _, _, actor = _composed_algorithm(math_cfg())
    # ratio 5 on a negative advantage: verl's default dual clip (3.0) would cap the loss at 3
    logp = torch.tensor([[math.log(5.0)]])
    loss, _ = get_policy_loss_fn("vanilla")(old_log_prob=torch.zeros(1, 1), log_prob=logp, advantages=-torch.ones(1, 1),
                                            response_mask=torch.ones(1, 1), loss_agg_mode="token-mean", config=actor)
    assert loss.item() == pytest.approx(5.0)
    _, _, with_c = _composed_algorithm(math_cfg("trainer_common.clip_ratio_c=3.0"))
    assert with_c.clip_ratio_c == 3.0


def test_dynamic_sampling_on_verl_without_transfer_queue_says_what_to_install(capsys):
    from ajet.backbone.verl import launch

    cfg = math_cfg("trainer_common.algorithm.filter_groups.enable=true")
    present = {"verl", "vllm", "ray"}
    code = launch.run(cfg, argparse.Namespace(with_logview=False),
                      find_spec=lambda name: object() if name.split(".")[0] in present else None)
    assert code == launch.EXIT_MISSING_DEPENDENCIES
    err = capsys.readouterr().err
    assert "filter_groups" in err and 'pip install "TransferQueue>=0.1.10"' in err


@pytest.mark.parametrize("policy", ["drop", "wait"])
def test_async_keys_select_verls_v1_async_trainer_with_the_same_staleness_bound(policy):
    from omegaconf import OmegaConf

    cfg = math_cfg("trainer_common.async.max_staleness=2", f"trainer_common.async.stale_policy={policy}")
    composed = compose_verl_config(translate_config(cfg, train_files="/t.parquet", val_files="/v.parquet"))
    assert OmegaConf.select(composed, "trainer.use_v1") is True
    assert composed.trainer.v1.trainer_mode == "colocate_async"
    assert composed.trainer.v1.sampler.max_off_policy_strategy == policy


def _verl_replay_buffer(threshold: int, policy: str, scheduled_at: dict[str, int], state: str):
    """verl's own asynchronous replay buffer holding groups scheduled at the given training steps,
    all finished (`state="finished"`) or all still running."""
    from collections import defaultdict

    from verl.trainer.ppo.v1.replay_buffer import ReplayBufferAsync

    buffer = ReplayBufferAsync.__new__(ReplayBufferAsync)  # no TransferQueue: only its policy methods run
    buffer.max_off_policy_threshold, buffer.max_off_policy_strategy = threshold, policy
    buffer.pending_keys, buffer.running_keys, buffer.finished_keys = defaultdict(set), defaultdict(set), defaultdict(set)
    buffer.prompt_global_steps = defaultdict(dict)
    for uid, step in scheduled_at.items():
        buffer.prompt_global_steps["train"][uid] = step
        (buffer.finished_keys if state == "finished" else buffer.running_keys)["train"].add(uid)
    return buffer


@pytest.mark.parametrize("max_staleness", [1, 2, 3])
def test_verls_replay_buffer_keeps_and_drops_what_ajets_producer_does(max_staleness):
    """The translated threshold, run through verl's own eviction code: a group `max_staleness`
    versions behind is trained, one more version behind is dropped (ajet's GroupProducer rule)."""
    cfg = math_cfg(f"trainer_common.async.max_staleness={max_staleness}", "trainer_common.async.stale_policy=drop")
    threshold = compose_verl_config(translate_config(cfg)).trainer.v1.sampler.max_off_policy_threshold
    step = 10  # verl's global_steps: the training step, trained with weights of version step - 1
    behind = {f"g{k}": step - k for k in range(max_staleness + 3)}  # scheduled k versions ago
    buffer = _verl_replay_buffer(threshold, "drop", behind, "finished")
    dropped = buffer._stale_terminal_keys(step, "train")
    assert dropped == {uid for uid, scheduled in behind.items() if step - scheduled > max_staleness}


@pytest.mark.parametrize("max_staleness", [1, 2])
def test_verls_replay_buffer_waits_when_ajets_producer_does(max_staleness):
    """`wait`: training step `step` blocks exactly when a running group would be more than
    `max_staleness` versions behind after it (ajet: GroupProducer waits for it instead of dropping)."""
    cfg = math_cfg(f"trainer_common.async.max_staleness={max_staleness}", "trainer_common.async.stale_policy=wait")
    threshold = compose_verl_config(translate_config(cfg)).trainer.v1.sampler.max_off_policy_threshold
    step = 10
    for k in range(max_staleness + 2):
        buffer = _verl_replay_buffer(threshold, "wait", {"slow": step - k}, "running")
        would_be_stale_after_update = k + 1 > max_staleness
        assert buffer._has_enough_samples(step, "train", 1, {"done"}) is (not would_be_stale_after_update), k


def test_async_on_verl_without_transfer_queue_says_what_to_install(capsys):
    from ajet.backbone.verl import launch

    cfg = math_cfg("trainer_common.async.max_staleness=1")
    present = {"verl", "vllm", "ray"}

    def find_spec(name):
        return object() if name.split(".")[0] in present else None

    code = launch.run(cfg, argparse.Namespace(with_logview=False), find_spec=find_spec)
    assert code == launch.EXIT_MISSING_DEPENDENCIES
    err = capsys.readouterr().err
    assert "transfer_queue" in err and "max_staleness=0" in err
    assert 'pip install "TransferQueue>=0.1.10"' in err


# -- the engine over verl's server-manager interface ------------------------------------------------


class EngineBackedServerManager:
    """verl's LLMServerClient interface (`generate(request_id, *, prompt_ids, sampling_params)` ->
    TokenOutput) served by an ajet engine, the way verl's vLLM replica serves it on a GPU."""

    def __init__(self, engine, global_steps: int = 7):
        self.engine = engine
        self.global_steps = global_steps
        self.calls: list[dict] = []
        self.loops: list[asyncio.AbstractEventLoop] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        self.loops.append(asyncio.get_running_loop())
        sp = dict(sampling_params)
        completion = await self.engine.generate(list(prompt_ids), from_verl_sampling_params(sp))
        return TokenOutput(
            token_ids=completion.token_ids,
            log_probs=completion.logprobs if sp.get("logprobs") else None,
            stop_reason="aborted" if completion.finish_reason == "abort" else "completed",
            extra_fields={"global_steps": self.global_steps},
        )


async def test_verl_server_engine_forwards_ids_and_returns_logprobs():
    tok = tokenizer()
    scripted = ScriptedEngine(tok, lambda text: "hello there")
    manager = EngineBackedServerManager(scripted, global_steps=5)
    engine = VerlServerEngine(manager, tok)
    prompt = tok.encode("Hi!", add_special_tokens=False)
    params = SamplingParams(max_tokens=50, temperature=0.6, top_p=0.9, top_k=10, stop_token_ids=[scripted.stop_token_id])

    out = await engine.generate(prompt, params)

    expected = tok.encode("hello there", add_special_tokens=False) + [scripted.stop_token_id]
    assert out.token_ids == expected
    assert out.logprobs == [scripted_logprob(i) for i in range(len(expected))]
    assert out.finish_reason == "stop"
    assert out.policy_versions == [5] * len(expected)  # stamped with verl's global step
    call = manager.calls[0]
    assert call["prompt_ids"] == prompt
    assert call["sampling_params"] == {
        "temperature": 0.6, "top_p": 0.9, "top_k": 10, "max_tokens": 50, "logprobs": True,
        "stop_token_ids": [scripted.stop_token_id],
    }

    short = await engine.generate(prompt, SamplingParams(max_tokens=2))
    assert short.finish_reason == "length" and len(short.token_ids) == 2


async def test_verl_server_engine_hops_onto_the_owning_loop():
    tok = tokenizer()
    manager = EngineBackedServerManager(ScriptedEngine(tok, lambda text: "ok"))
    owner = asyncio.get_running_loop()
    engine = VerlServerEngine(manager, tok, loop=owner)
    result: dict = {}

    def other_thread():
        result["out"] = asyncio.run(engine.generate([1, 2, 3], SamplingParams(max_tokens=8)))

    thread = threading.Thread(target=other_thread)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.01)
    assert result["out"].token_ids[-1] == manager.engine.stop_token_id
    assert manager.loops == [owner]  # the server manager was only ever used from its own loop


def test_sampling_params_for_verl_omit_unset_options():
    sp = to_verl_sampling_params(SamplingParams(max_tokens=3, temperature=0.0))
    assert sp == {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 3, "logprobs": True}


def test_sampling_params_survive_the_round_trip_through_verls_dict():
    params = SamplingParams(max_tokens=7, temperature=0.7, top_p=0.9, top_k=20, stop_token_ids=[2], stop=["\n\n"], seed=5)
    assert from_verl_sampling_params(to_verl_sampling_params(params)) == params
    assert from_verl_sampling_params(to_verl_sampling_params(SamplingParams(max_tokens=3))) == SamplingParams(max_tokens=3)


# -- the agent-loop adapter -------------------------------------------------------------------------


class AddToolWorkflow(Workflow):
    """Two model calls: the scripted model calls `add`, reads the result, then answers."""

    async def execute(self, workflow_task, tuner):
        import httpx

        creds = tuner.as_oai_baseurl_apikey()
        headers = {"Authorization": f"Bearer {creds.api_key}"}
        messages = [{"role": "user", "content": workflow_task.task.main_query}]
        async with httpx.AsyncClient(base_url=creds.base_url, headers=headers, timeout=60) as client:
            for _ in range(3):
                reply = (await client.post("/chat/completions", json={"model": "m", "messages": messages, "tools": [ADD_TOOL]})).json()
                message = reply["choices"][0]["message"]
                messages.append({k: v for k, v in message.items() if v is not None})
                if not message.get("tool_calls"):
                    return WorkflowOutput(reward=None, metadata={"final_answer": message["content"]})
                for call in message["tool_calls"]:
                    args = json.loads(call["function"]["arguments"])
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": str(args["a"] + args["b"])})
        return WorkflowOutput(reward=None, metadata={"final_answer": ""})


class AnswerJudge(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output):
        ok = workflow_output.metadata["final_answer"].strip() == workflow_task.task.metadata["reference_answer"]
        return (1.0 if ok else 0.25), ok


def _scripted_reply(text: str) -> str:
    if "<tool_response>" not in text:
        return tool_call_text("add", {"a": 40, "b": 2}, content="Let me add.")
    return "42"


@pytest.fixture
def agent_loop_env(monkeypatch):
    """An AjetAgentLoop built the way verl's worker builds it, over a fake server manager."""
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from ajet.backbone.verl import agent_loop as al
    from ajet.training import user_code

    cfg = math_cfg("rollout.proxy_host=127.0.0.1", "rollout.max_env_worker=2", "rollout.temperature=0.8",
                   "data.max_prompt_length=512", "data.max_response_length=256")
    monkeypatch.setattr(user_code, "build_workflow_and_judge", lambda c: (AddToolWorkflow, AnswerJudge(config=c)))
    verl_cfg = compose_verl_config(translate_config(cfg))
    tok = tokenizer()
    scripted = ScriptedEngine(tok, _scripted_reply)
    manager = EngineBackedServerManager(scripted)

    def make_loop():
        return al.AjetAgentLoop(
            trainer_config=DictConfigWrap(verl_cfg),
            server_manager=manager,
            tokenizer=tok,
            processor=None,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(verl_cfg.data),
            ajet_config_path=cfg,
        )

    yield SimpleNamespace(cfg=cfg, verl_cfg=verl_cfg, tok=tok, scripted=scripted, manager=manager, make_loop=make_loop)
    al.close_worker_contexts()


async def test_agent_loop_runs_one_ajet_episode_into_an_agent_loop_output(agent_loop_env):
    from ajet.backbone.verl.agent_loop import task_to_extra_info

    env = agent_loop_env
    task = Task(main_query="What is 40 + 2?", task_id="t-1", metadata={"reference_answer": "42"})
    row = {"raw_prompt": task.init_messages, "extra_info": task_to_extra_info(task, 0), "uid": "g-1", "index": 0}
    sampling = {"temperature": 0.8, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}

    out = await env.make_loop().run(sampling, **row)

    # two model calls went through verl's interface with ajet's sampling settings and logprobs on
    assert len(env.manager.calls) == 2
    assert all(c["sampling_params"]["temperature"] == 0.8 and c["sampling_params"]["logprobs"] for c in env.manager.calls)
    first_prompt, second_prompt = (c["prompt_ids"] for c in env.manager.calls)
    first_reply, second_reply = (r.completion.token_ids for r in env.scripted.requests)
    # the prompt is the first call's prompt; the response holds reply 1, the tool turn, reply 2
    assert out.prompt_ids == first_prompt
    assert out.prompt_ids + out.response_ids == second_prompt + second_reply
    n1, n2 = len(first_reply), len(second_reply)
    tool_len = len(out.response_ids) - n1 - n2
    assert tool_len > 0
    assert out.response_ids[:n1] == first_reply
    assert out.response_mask == [1] * n1 + [0] * tool_len + [1] * n2
    expected_lp = [scripted_logprob(i) for i in range(n1)] + [0.0] * tool_len + [scripted_logprob(i) for i in range(n2)]
    assert out.response_logprobs == pytest.approx(expected_lp)
    assert out.reward_score == 1.0  # the judge's reward for the right answer
    assert out.extra_fields["ajet_num_samples"] == 1 and out.extra_fields["ajet_dropped_samples"] == 0
    assert out.extra_fields["ajet_is_success"] is True and out.extra_fields["ajet_error"] == ""
    assert out.num_turns == 2


class ToolCountJudge(BaseJudge):
    """Scores the number of tool calls in the episode's turns (the judge-sees-every-turn API)."""

    def compute_reward(self, workflow_task, workflow_output, turns):
        return float(sum(len(t.tool_calls) for t in turns)) + 0.5 * len(turns), True


async def test_agent_loops_judge_reads_every_turn_of_the_episode(agent_loop_env, monkeypatch):
    from ajet.backbone.verl.agent_loop import task_to_extra_info
    from ajet.training import user_code

    env = agent_loop_env
    monkeypatch.setattr(user_code, "build_workflow_and_judge", lambda c: (AddToolWorkflow, ToolCountJudge(config=c)))
    task = Task(main_query="What is 40 + 2?", task_id="t-2", metadata={"reference_answer": "42"})
    row = {"raw_prompt": task.init_messages, "extra_info": task_to_extra_info(task, 0), "uid": "g-2", "index": 0}

    out = await env.make_loop().run({"temperature": 0.8, "top_p": 1.0, "top_k": -1, "logprobs": True}, **row)

    # one `add` call in the first of two turns: 1 + 0.5 * 2, delivered as verl's reward_score
    assert out.reward_score == 2.0
    assert out.extra_fields["ajet_error"] == ""


async def test_agent_loop_output_through_verls_postprocess_matches_our_batch(agent_loop_env):
    """verl's own worker code pads our AgentLoopOutputs; samples_to_dataproto must give the same batch."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    from ajet.backbone.verl.agent_loop import task_to_extra_info

    env = agent_loop_env
    tasks = [
        Task(main_query="What is 40 + 2?", task_id="t-a", metadata={"reference_answer": "42"}),
        Task(main_query="And 1 + 1?", task_id="t-b", metadata={"reference_answer": "2"}),
    ]
    sampling = {"temperature": 0.8, "top_p": 1.0, "top_k": -1, "logprobs": True}
    loop = env.make_loop()
    outputs, kwargs = [], []
    for i, task in enumerate(tasks):
        row = {"raw_prompt": task.init_messages, "extra_info": task_to_extra_info(task, i), "uid": task.task_id}
        outputs.append(await loop.run(sampling, **row))
        kwargs.append(row)
    assert [o.reward_score for o in outputs] == [1.0, 0.25]

    worker = AgentLoopWorker.__new__(AgentLoopWorker)  # only its padding/assembly methods are used
    worker.rollout_config = SimpleNamespace(prompt_length=512, response_length=256)
    worker.tokenizer, worker.processor = env.tok, None
    worker.reward_loop_worker_handles, worker.distillation_enabled, worker.mm_processor_kwargs = None, False, {}
    padded = [await worker._agent_loop_postprocess(o, False, **kw) for o, kw in zip(outputs, kwargs)]
    theirs = worker._postprocess(padded)

    samples = [
        Sample(
            input_ids=o.prompt_ids + o.response_ids,
            loss_mask=[0] * len(o.prompt_ids) + o.response_mask,
            rollout_logprobs=[0.0] * len(o.prompt_ids) + o.response_logprobs,
            token_versions=[-1] * len(o.prompt_ids) + [0 if m else -1 for m in o.response_mask],
            task_id=t.task_id,
            episode_id=f"e{i}",
            reward=o.reward_score,
        )
        for i, (o, t) in enumerate(zip(outputs, tasks))
    ]
    ours = samples_to_dataproto(samples, env.tok, 512, 256)
    for key in ("prompts", "responses", "response_mask", "input_ids", "attention_mask", "position_ids", "rollout_log_probs", "rm_scores"):
        assert ours.batch[key].shape == theirs.batch[key].shape, key
        assert ours.batch[key].dtype == theirs.batch[key].dtype, key
        assert bool((ours.batch[key] == theirs.batch[key]).all()), key
    assert list(ours.non_tensor_batch["uid"]) == ["t-a", "t-b"]


async def test_agent_loop_turns_a_failed_episode_into_a_zero_reward_row(agent_loop_env, monkeypatch):
    class Broken(Workflow):
        async def execute(self, workflow_task, tuner):
            raise RuntimeError("tool server down")

    from ajet.backbone.verl.agent_loop import task_to_extra_info
    from ajet.training import user_code

    monkeypatch.setattr(user_code, "build_workflow_and_judge", lambda c: (Broken, AnswerJudge(config=c)))
    task = Task(main_query="What is 40 + 2?", task_id="t-x", metadata={"reference_answer": "42"})
    out = await agent_loop_env.make_loop().run(
        {"temperature": 1.0, "top_p": 1.0, "top_k": -1}, raw_prompt=task.init_messages, extra_info=task_to_extra_info(task, 0)
    )
    assert out.reward_score == 0.0
    assert out.response_mask == [0] and len(out.response_ids) == 1  # one masked pad token: no loss
    assert out.prompt_ids  # the first prompt still fills the row
    assert "tool server down" in out.extra_fields["ajet_error"]
    assert agent_loop_env.manager.calls == []


async def test_agent_loop_writes_a_logview_page_per_worker(agent_loop_env, monkeypatch, tmp_path):
    from ajet.backbone.verl.agent_loop import LOGVIEW_DIR_ENV, task_to_extra_info

    monkeypatch.setenv(LOGVIEW_DIR_ENV, str(tmp_path / "logview"))
    agent_loop_env.cfg.trainer_common.logview_episodes = 2
    task = Task(main_query="What is 40 + 2?", task_id="t-lv", metadata={"reference_answer": "42"})
    loop = agent_loop_env.make_loop()
    pages = []
    for i in range(2):
        await loop.run({"temperature": 1.0, "top_p": 1.0, "top_k": -1}, raw_prompt=task.init_messages,
                       extra_info=task_to_extra_info(task, i), uid="g")
        pages.append(sorted((tmp_path / "logview").glob("rollout-*.html")) if (tmp_path / "logview").exists() else [])
    assert pages[0] == []  # the page is rewritten once per logview_episodes episodes
    (page,) = pages[1]
    text = page.read_text()
    assert text.count('class="episode') == 2 and "t-lv" in text


class TwoContextsWorkflow(Workflow):
    """Two model calls whose contexts do not extend each other, so the tracker makes two samples."""

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        first = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": workflow_task.task.main_query}], max_tokens=8
        )
        second = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Check this answer: " + first.choices[0].message.content}],
            max_tokens=8,
        )
        return WorkflowOutput(reward=None, metadata={"final_answer": second.choices[0].message.content})


async def test_verls_v1_worker_stores_every_sample_of_an_episode_with_its_versions(agent_loop_env, monkeypatch):
    """With verl's v1 trainer (ajet's async mode) an episode split into two samples reaches verl's
    TransferQueue as two trajectories, each tagged with the policy versions v1's staleness code reads."""
    import numpy as np
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.trainer.ppo.v1 import agent_loop_tq
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from ajet.backbone.verl import agent_loop as al
    from ajet.training import user_code

    env = agent_loop_env
    monkeypatch.setattr(user_code, "build_workflow_and_judge", lambda c: (TwoContextsWorkflow, AnswerJudge(config=c)))
    env.manager.engine = ScriptedEngine(env.tok, lambda text: "42")
    env.manager.global_steps = 3
    v1_cfg = compose_verl_config(translate_config(math_cfg(
        "trainer_common.async.max_staleness=1", "data.max_prompt_length=512", "data.max_response_length=256")))
    loop = al.AjetAgentLoop(
        trainer_config=DictConfigWrap(v1_cfg), server_manager=env.manager, tokenizer=env.tok, processor=None,
        dataset_cls=RLHFDataset, data_config=DictConfigWrap(v1_cfg.data), ajet_config_path=env.cfg,
    )
    task = Task(main_query="What is 40 + 2?", task_id="t-v1", metadata={"reference_answer": "42"})
    row = {"raw_prompt": task.init_messages, "extra_info": al.task_to_extra_info(task, 0), "uid": "g-v1",
           "session_id": 1, "global_steps": 3}
    outputs = await loop.run({"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}, **row)
    assert isinstance(outputs, list) and len(outputs) == 2
    assert all(o.extra_fields["ajet_dropped_samples"] == 0 for o in outputs)

    stored = []

    async def kv_batch_put(*, keys, fields, tags, partition_id):
        stored.append((keys, fields, tags, partition_id))

    monkeypatch.setattr(agent_loop_tq.tq, "async_kv_batch_put", kv_batch_put)
    worker_cls = agent_loop_tq.AgentLoopWorkerTQ.__ray_metadata__.modified_class  # the class behind the Ray actor
    worker = worker_cls.__new__(worker_cls)  # no Ray actor, no TransferQueue: only its postprocess runs
    worker.tokenizer, worker.processor = env.tok, None
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    await worker._agent_loop_postprocess(outputs, False, **row)

    ((keys, fields, tags, partition),) = stored
    assert keys == ["g-v1_1_0", "g-v1_1_1"] and partition == "train"
    assert [t["response_len"] for t in tags] == [len(o.response_ids) for o in outputs]
    # the judge's reward at each trajectory's last token, the sampled logprobs as verl's rollout_log_probs
    assert [float(r[-1]) for r in fields["rm_scores"].unbind(0)] == [1.0, 1.0]
    for stored_logprobs, output in zip(fields["rollout_log_probs"].unbind(0), outputs):
        assert stored_logprobs.tolist() == pytest.approx(output.response_logprobs)
    # what v1's trainer does with the tags (trainer_base: np.array(..., dtype=int)); None would raise
    assert np.array([t["min_global_steps"] for t in tags], dtype=int).tolist() == [3, 3]
    assert np.array([t["max_global_steps"] for t in tags], dtype=int).tolist() == [3, 3]


def test_an_episode_split_into_several_samples_returns_the_last_and_counts_the_rest():
    from ajet.backbone.verl.agent_loop import episode_to_agent_loop_outputs
    from ajet.schema import EpisodeResult

    first = _sample([1, 2], [3, 4], [1, 1], [-0.1, -0.2], 0.7, "g", "ep")
    last = _sample([1, 9], [5, 6, 7], [1, 0, 1], [-0.3, 0.0, -0.4], 0.7, "g", "ep")
    result = EpisodeResult(task=Task(main_query="q", task_id="g"), episode_id="ep", repeat_index=0,
                           samples=[first, last], reward=0.7, is_success=True, num_turns=3)
    (out,) = episode_to_agent_loop_outputs(result, tokenizer(), prompt_length=8, response_length=8, keep_all=False)
    assert (out.prompt_ids, out.response_ids, out.response_mask) == ([1, 9], [5, 6, 7], [1, 0, 1])
    assert out.response_logprobs == [-0.3, 0.0, -0.4] and out.reward_score == 0.7
    assert out.extra_fields["ajet_num_samples"] == 2 and out.extra_fields["ajet_dropped_samples"] == 1


def test_mask_truncated_completions_zeroes_the_response_mask_of_cut_samples_only():
    from ajet.backbone.verl.agent_loop import episode_to_agent_loop_outputs
    from ajet.schema import EpisodeResult

    stopped = _sample([1, 2], [3, 4], [1, 1], [-0.1, -0.2], 0.5, "g", "a")
    stopped.metadata["finish_reason"] = "length"  # its last reply hit max tokens
    finished = _sample([1, 2], [5, 6], [1, 1], [-0.1, -0.2], 0.5, "g", "b")
    finished.metadata["finish_reason"] = "stop"
    long = _sample([1, 2], [7, 8, 9, 10], [1, 1, 1, 1], [-0.1] * 4, 0.5, "g", "c")  # cut by verl's response length

    def out(sample, mask_truncated):
        result = EpisodeResult(task=Task(main_query="q", task_id="g"), episode_id=sample.episode_id, repeat_index=0,
                               samples=[sample], reward=0.5, is_success=True)
        (o,) = episode_to_agent_loop_outputs(result, tokenizer(), prompt_length=8, response_length=3, keep_all=False,
                                             mask_truncated=mask_truncated)
        return o

    assert out(stopped, True).response_mask == [0, 0] and out(stopped, True).reward_score == 0.5
    assert out(stopped, False).response_mask == [1, 1]
    assert out(finished, True).response_mask == [1, 1]
    assert out(long, True).response_mask == [0, 0, 0] and out(long, False).response_mask == [1, 1, 1]


class AskOnceWorkflow(Workflow):
    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": workflow_task.task.main_query}], max_tokens=6
        )
        return WorkflowOutput(reward=0.5, metadata={"final_answer": reply.choices[0].message.content})


async def test_agent_loop_driven_by_the_hf_engine_keeps_tokens_and_logprobs_aligned(agent_loop_env, monkeypatch):
    """A real (tiny, random) model behind verl's interface: the logprobs verl receives are the
    model's own log-softmax at exactly the response tokens."""
    import torch

    from ajet.backbone.verl.agent_loop import task_to_extra_info
    from ajet.engine.hf import HFEngine
    from ajet.models import load_model
    from ajet.training import user_code

    torch.set_num_threads(2)
    monkeypatch.setattr(user_code, "build_workflow_and_judge", lambda c: (AskOnceWorkflow, None))
    model = load_model("builtin:tiny-qwen2-random")
    engine = HFEngine(model, agent_loop_env.tok, max_batch_size=4, seed=0)
    engine.start()
    agent_loop_env.manager.engine = engine
    try:
        task = Task(main_query="Say something.", task_id="t-hf")
        out = await agent_loop_env.make_loop().run(
            {"temperature": 1.0, "top_p": 1.0, "top_k": -1}, raw_prompt=task.init_messages, extra_info=task_to_extra_info(task, 0)
        )
    finally:
        engine.shutdown()

    assert out.reward_score == 0.5
    assert 1 <= len(out.response_ids) <= 6 and out.response_mask == [1] * len(out.response_ids)
    with torch.no_grad():
        logits = model(torch.tensor([out.prompt_ids + out.response_ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    expected = [logp[len(out.prompt_ids) - 1 + i, t].item() for i, t in enumerate(out.response_ids)]
    assert out.response_logprobs == pytest.approx(expected, abs=1e-3)


# -- batch conversion -------------------------------------------------------------------------------


def _sample(prompt, response, mask, logprobs, reward, task_id, episode_id="e"):
    return Sample(
        input_ids=prompt + response,
        loss_mask=[0] * len(prompt) + mask,
        rollout_logprobs=[0.0] * len(prompt) + logprobs,
        token_versions=[-1] * len(prompt) + [0 if m else -1 for m in mask],
        task_id=task_id,
        episode_id=episode_id,
        reward=reward,
    )


def test_samples_to_dataproto_layout_masks_and_logprobs():
    from verl import DataProto

    tok = tokenizer()
    pad = tok.pad_token_id
    a = _sample([11, 12, 13], [21, 22, 31, 23], [1, 1, 0, 1], [-0.1, -0.2, 0.0, -0.3], 1.0, "g1", "e1")
    b = _sample([14], [24, 25], [1, 1], [-0.5, -0.6], -1.0, "g1", "e2")
    proto = samples_to_dataproto([a, b], tok, max_prompt_len=4, max_response_len=5)

    assert isinstance(proto, DataProto) and len(proto) == 2
    bt = proto.batch
    assert bt["prompts"].tolist() == [[pad, 11, 12, 13], [pad, pad, pad, 14]]
    assert bt["responses"].tolist() == [[21, 22, 31, 23, pad], [24, 25, pad, pad, pad]]
    assert bt["response_mask"].tolist() == [[1, 1, 0, 1, 0], [1, 1, 0, 0, 0]]
    assert bt["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0]]
    assert bt["input_ids"].tolist() == [r1 + r2 for r1, r2 in zip(bt["prompts"].tolist(), bt["responses"].tolist())]
    assert bt["position_ids"].tolist()[1] == [0, 0, 0, 0, 1, 2, 2, 2, 2]
    assert bt["rollout_log_probs"][0].tolist() == pytest.approx([-0.1, -0.2, 0.0, -0.3, 0.0])
    assert bt["rm_scores"].tolist() == [[0, 0, 0, 1.0, 0], [0, -1.0, 0, 0, 0]]
    assert list(proto.non_tensor_batch["uid"]) == ["g1", "g1"]
    assert list(proto.non_tensor_batch["episode_id"]) == ["e1", "e2"]


def test_split_sample_truncates_prompt_from_the_left_and_response_from_the_right():
    s = _sample([1, 2, 3, 4, 5], [6, 7, 8, 9], [1, 0, 1, 1], [-1.0, 0.0, -2.0, -3.0], 0.0, "g")
    traj = split_sample(s, max_prompt_len=3, max_response_len=3)
    assert traj.prompt_ids == [3, 4, 5] and traj.prompt_truncated
    assert traj.response_ids == [6, 7, 8] and traj.response_mask == [1, 0, 1] and traj.response_truncated
    assert traj.response_logprobs == [-1.0, 0.0, -2.0]


def test_samples_to_dataproto_puts_reward_at_the_last_token_of_a_truncated_response():
    s = _sample([1], [6, 7, 8, 9], [1, 1, 1, 1], [-1.0] * 4, 0.5, "g")
    proto = samples_to_dataproto([s], tokenizer(), max_prompt_len=2, max_response_len=3)
    assert proto.batch["rm_scores"].tolist() == [[0.0, 0.0, 0.5]]
    assert proto.batch["responses"].tolist() == [[6, 7, 8]]


# -- the launcher's dependency check ----------------------------------------------------------------


def test_missing_verl_explains_how_to_install(capsys, tmp_path):
    from ajet.backbone.verl import launch

    def fake_find_spec(name):
        return None if name in ("vllm", "verl") else object()

    missing = launch.missing_dependencies(find_spec=fake_find_spec)
    assert missing == ["verl", "vllm"]
    message = launch.install_message(missing)
    assert 'pip install "ajet[verl]"' in message
    assert "verl==0.9.1" in message and "vllm" in message and "ray" in message

    cfg = math_cfg()
    code = launch.run(cfg, LaunchOptions("verl", tmp_path), find_spec=fake_find_spec)
    assert code == launch.EXIT_MISSING_DEPENDENCIES
    assert 'pip install "ajet[verl]"' in capsys.readouterr().err


def test_verl_on_a_machine_without_gpus_says_so_instead_of_waiting(capsys, monkeypatch, tmp_path):
    import torch

    from ajet.backbone.verl import launch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options = LaunchOptions("verl", tmp_path)
    code = launch.run(math_cfg("trainer_common.n_gpus_per_node=2"), options, find_spec=lambda name: object())
    assert code == launch.EXIT_NO_GPU
    err = capsys.readouterr().err
    assert "needs 2 NVIDIA GPU(s)" in err and "found 0" in err
    assert "n_gpus_per_node=0" in err  # the way to run verl on this machine anyway
    # joining a cluster: its GPUs may live on other nodes, so no local check
    assert launch.gpu_problem(2, environ={"RAY_ADDRESS": "head:6379"}) is None


def _write_gsm8k_like(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": f"... #### {a}"}) + "\n" for q, a in rows))
    return path


def test_swanlab_through_verl_logs_offline_into_the_run_directory(tmp_path, monkeypatch):
    from ajet.backbone.verl.launch import prepare_run

    monkeypatch.delenv("SWANLAB_MODE", raising=False)
    data = _write_gsm8k_like(tmp_path / "train.jsonl", [("1+1?", "2")])
    cfg = math_cfg("task_reader.type=dataset_file", f"task_reader.dataset_file.training.file_path={data}",
                   "trainer_common.logger=[jsonl,swanlab]", "trainer_common.swanlab_mode=offline")
    _, env_vars = prepare_run(cfg, tmp_path / "run")
    assert env_vars["SWANLAB_MODE"] == "offline"  # verl's own default, cloud, needs credentials
    assert env_vars["SWANLAB_LOG_DIR"] == str(tmp_path / "run" / "swanlog")
    monkeypatch.setenv("SWANLAB_MODE", "disabled")  # the user's environment wins
    assert prepare_run(cfg, tmp_path / "run")[1]["SWANLAB_MODE"] == "disabled"


def test_a_resumed_run_keeps_the_metrics_logged_before_it(tmp_path):
    from ajet.backbone.verl.launch import metrics_path

    assert metrics_path(tmp_path) == tmp_path / "metrics.jsonl"
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert metrics_path(tmp_path) == tmp_path / "metrics.resume1.jsonl"
    (tmp_path / "metrics.resume1.jsonl").write_text('{"step": 2}\n')
    assert metrics_path(tmp_path) == tmp_path / "metrics.resume2.jsonl"


def test_prepare_run_writes_what_verl_reads(tmp_path):
    """The run directory: parquet rows verl's RLHFDataset yields with our Task inside, the agent-loop
    YAML that hydra turns into AjetAgentLoop (as verl's worker does), and a config verl validates."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.trainer.ppo.utils import (
        create_rl_dataset,
        need_critic,
        need_reference_policy,
    )
    from verl.utils.config import validate_config
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from ajet.backbone.verl.agent_loop import AjetAgentLoop, task_from_extra_info
    from ajet.backbone.verl.launch import prepare_run

    train = _write_gsm8k_like(tmp_path / "train.jsonl", [("1+1?", "2"), ("2+3?", "5")])
    cfg = math_cfg(
        "lora.lora_rank=0",  # with LoRA, verl's validate_config imports its vLLM rollout (needs vLLM)
        "task_reader.type=dataset_file",
        f"task_reader.dataset_file.training.file_path={train}",
        "data.shuffle=false",
        "data.max_prompt_length=256",
        "data.max_response_length=128",
    )
    verl_cfg, env_vars = prepare_run(cfg, tmp_path / "run")

    assert Path(verl_cfg.data.train_files).is_file() and verl_cfg.data.val_files == verl_cfg.data.train_files
    assert Path(env_vars["AJET_CONFIG_PATH"]).is_file() and env_vars["VERL_FILE_LOGGER_PATH"].startswith(str(tmp_path))
    assert Path(verl_cfg.actor_rollout_ref.model.path).is_dir()  # builtin: resolved to a local directory
    assert verl_cfg.trainer.default_local_dir == str(tmp_path / "run" / "checkpoints")
    validate_config(config=verl_cfg, use_reference_policy=need_reference_policy(verl_cfg), use_critic=need_critic(verl_cfg))

    tok = tokenizer()
    dataset = create_rl_dataset(verl_cfg.data.train_files, verl_cfg.data, tok, None, is_train=True)
    assert isinstance(dataset, RLHFDataset) and len(dataset) == 2
    row = dataset[1]
    task = task_from_extra_info(row["extra_info"])
    assert task.main_query == "2+3?" and task.metadata["reference_answer"] == "5"
    assert row["agent_name"] == AGENT_LOOP_NAME and row["index"] == 1
    assert row["raw_prompt"][0]["content"] == "2+3?"

    (entry,) = OmegaConf.load(verl_cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    assert entry.name == AGENT_LOOP_NAME
    OmegaConf.resolve(verl_cfg)
    loop = hydra.utils.instantiate(
        config=entry,
        trainer_config=DictConfigWrap(config=verl_cfg),
        server_manager=None,
        tokenizer=tok,
        processor=None,
        hf_model_type=None,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(verl_cfg.data),
        tools=ToolListWrap([]),
    )
    assert isinstance(loop, AjetAgentLoop)
    assert loop.ajet_config.data.max_response_length == 128  # read back from the run directory


# -- Ray start-up shared with --with-ray ------------------------------------------------------------


def test_ray_init_kwargs_join_ray_address_or_start_local():
    from ajet.ray_utils import ray_init_kwargs

    joined = ray_init_kwargs(num_cpus=4, environ={"RAY_ADDRESS": "10.0.0.5:6379"})
    assert joined["address"] == "10.0.0.5:6379" and "num_cpus" not in joined  # a cluster's resources are fixed
    local = ray_init_kwargs(num_cpus=2, runtime_env={"env_vars": {"A": "1"}}, environ={"RAY_ADDRESS": "  "})
    assert local["address"] == "local" and local["num_cpus"] == 2
    assert local["runtime_env"] == {"env_vars": {"A": "1"}}
    assert ray_init_kwargs(address="ray://head:10001", environ={})["address"] == "ray://head:10001"


@pytest.mark.slow
def test_ray_session_starts_local_ray_and_shuts_down_on_ctrl_c(monkeypatch):
    import ray

    from ajet.ray_utils import ray_session

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    with pytest.raises(KeyboardInterrupt), ray_session(num_cpus=1) as info:
        assert ray.is_initialized() and not info.connected_to_cluster

        @ray.remote
        def square(x):
            return x * x

        assert ray.get(square.remote(7)) == 49
        raise KeyboardInterrupt
    assert not ray.is_initialized()
