"""verl's own trainer on the CPU (`trainer_common.n_gpus_per_node: 0`): the translation's CPU keys,
the keys `ajet.verl:` may add, the TRL fix, the "hf" rollout server, and two real GRPO steps run
by `ajet --backbone=verl` end to end (Ray, verl's agent-loop workers, FSDP2 over gloo, weight sync).
"""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path

import pytest
from verl_cpu_run import run_ajet_on_verl_cpu

pytest.importorskip("verl")
pytest.importorskip("ray")

from ajet.backbone.verl.config_translation import VerlConfigError, compose_verl_config, translate_config  # noqa: E402
from ajet.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MATH_YAML = REPO / "tutorial" / "example_math_agent" / "math_agent.yaml"


def math_cfg(*overrides: str):
    # lora_rank=0: the tutorial trains LoRA, verl's CPU path is full-weight only (checked below).
    return load_config(MATH_YAML, ["model.path=builtin:tiny-qwen2-random", "lora.lora_rank=0", *overrides])


# -- translation ------------------------------------------------------------------------------------


def test_zero_gpus_selects_the_hf_rollout_fsdp2_in_float32_and_one_logical_gpu():
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    composed = compose_verl_config(translate_config(math_cfg("trainer_common.n_gpus_per_node=0")))
    arr = composed.actor_rollout_ref
    assert arr.rollout.name == "hf" and composed.trainer.n_gpus_per_node == 1 and composed.trainer.device == "cpu"
    assert arr.actor.strategy == "fsdp2" and arr.model.override_config.attn_implementation == "sdpa"
    OmegaConf.resolve(composed)
    actor = omega_conf_to_dataclass(arr.actor)
    assert dict(actor.fsdp_config.mixed_precision) == {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    validate_config(config=composed, use_reference_policy=need_reference_policy(composed), use_critic=need_critic(composed))

    with pytest.raises(VerlConfigError, match="lora_rank"):
        translate_config(math_cfg("trainer_common.n_gpus_per_node=0", "lora.lora_rank=8"))
    # with GPUs, none of it
    gpu = compose_verl_config(translate_config(math_cfg()))
    assert gpu.actor_rollout_ref.rollout.name == "vllm" and gpu.actor_rollout_ref.actor.strategy == "fsdp"


def test_ajet_verl_may_fill_verls_free_form_mappings_and_omitted_dataclass_fields():
    cfg = math_cfg()
    cfg.verl = {
        "actor_rollout_ref": {
            "model": {"override_config": {"attn_implementation": "sdpa"}},
            "rollout": {"engine_kwargs": {"vllm": {"enable_prefix_caching": True}}},
            "actor": {"fsdp_config": {"mixed_precision": {"param_dtype": "fp32"}}},
        }
    }
    composed = compose_verl_config(translate_config(cfg))
    arr = composed.actor_rollout_ref
    assert arr.model.override_config.attn_implementation == "sdpa"
    assert arr.rollout.engine_kwargs.vllm.enable_prefix_caching is True
    assert arr.actor.fsdp_config.mixed_precision.param_dtype == "fp32"
    # everything else stays closed
    cfg.verl = {"actor_rollout_ref": {"actor": {"fsdp_config": {"mixed_precison": {}}}}}
    with pytest.raises(VerlConfigError, match="mixed_precison: verl 0.9.1 has no such setting"):
        compose_verl_config(translate_config(cfg))


def test_verl_processes_load_ajets_modules_next_to_the_users():
    from ajet.backbone.verl.launch import verl_process_env

    gpu = verl_process_env(False, "7", environ={"VERL_USE_EXTERNAL_MODULES": "my_plugin"})
    # The run mark goes to every worker, GPU or not: `ajet --kill` finds them by it.
    assert gpu == {"VERL_USE_EXTERNAL_MODULES": "my_plugin,ajet.backbone.verl.compat", "AJET_RUN_ID": "7"}
    cpu = verl_process_env(True, "7", environ={})
    assert cpu["VERL_USE_EXTERNAL_MODULES"].split(",") == [
        "ajet.backbone.verl.compat", "ajet.backbone.verl.cpu_platform", "ajet.backbone.verl.hf_rollout"]
    assert cpu["VERL_PLATFORM"] == "cpu" and cpu["AJET_RUN_ID"] == "7"


# -- TRL next to verl -------------------------------------------------------------------------------


def test_verl_sees_trl_only_when_trl_has_the_value_head_model(monkeypatch):
    import verl.models.transformers.monkey_patch as monkey_patch

    from ajet.backbone.verl import compat

    assert monkey_patch.is_trl_available is compat.trl_has_value_head_model
    real_trl = pytest.importorskip("trl")
    expected = hasattr(real_trl, "AutoModelForCausalLMWithValueHead")
    try:
        import trl.experimental.ppo as ppo

        expected = expected or hasattr(ppo, "AutoModelForCausalLMWithValueHead")
    except ImportError:
        pass
    assert compat.trl_has_value_head_model() is expected

    old_trl = types.ModuleType("trl")
    old_trl.AutoModelForCausalLMWithValueHead = object
    old_trl.__spec__ = real_trl.__spec__
    monkeypatch.setitem(sys.modules, "trl", old_trl)
    monkeypatch.setitem(sys.modules, "trl.experimental.ppo", None)  # import fails, as in TRL 0.x
    assert compat.trl_has_value_head_model() is True


# -- the hf rollout server --------------------------------------------------------------------------


def test_hf_rollout_server_serves_verls_interface_and_swaps_weights():
    import torch

    from ajet.backbone.verl.hf_rollout import HFRolloutServer

    torch.set_num_threads(2)
    server = HFRolloutServer("builtin:tiny-qwen2-random", max_model_len=256, max_batch_size=4)
    prompt = [5, 6, 7, 8]
    params = {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    try:
        first = asyncio.run(server.generate("r1", prompt_ids=prompt, sampling_params=params))
        assert len(first.token_ids) == 4 and len(first.log_probs) == 4
        assert first.extra_fields["global_steps"] == 0
        with torch.no_grad():
            logits = server.model(torch.tensor([prompt + first.token_ids])).logits[0]
        expected = torch.log_softmax(logits.float(), -1)[len(prompt) - 1 : -1].gather(1, torch.tensor(first.token_ids)[:, None])
        assert first.log_probs == pytest.approx(expected[:, 0].tolist(), abs=1e-4)

        # the trainer's weights, as verl's FSDP worker sends them (HF names, full tensors)
        new = [(name, torch.randn_like(t)) for name, t in server.model.state_dict().items()]
        record = server.update_weights(new, global_steps=3)
        assert record == {"tensors": len(new), "global_steps": 3}
        second = asyncio.run(server.generate("r2", prompt_ids=prompt, sampling_params=params))
        assert second.extra_fields["global_steps"] == 3
        assert second.log_probs != pytest.approx(first.log_probs, abs=1e-3)
        name, tensor = next((n, t) for n, t in new if ".layers.0." in n)  # (embeddings are tied to lm_head)
        assert torch.equal(server.model.state_dict()[name], tensor)

        with pytest.raises(ValueError, match="does not have"):
            server.update_weights([("base_model.lora_A.weight", torch.zeros(2, 2))], global_steps=4)
        assert server.get_weight_updates() == [record]
    finally:
        server.engine.shutdown()


# -- end to end -------------------------------------------------------------------------------------

def test_two_grpo_steps_of_verls_trainer_on_the_cpu(tmp_path):
    """`ajet --backbone=verl` with n_gpus_per_node=0: verl's RayPPOTrainer, its agent-loop workers
    running ajet's workflow through the proxy, GRPO, an FSDP2 update with a KL reference, weight
    sync to the rollout server and a checkpoint. The rollout's logprobs must equal the trainer's at
    both steps: at step 2 only if the updated weights reached the rollout server (without the sync
    the gap measured 0.07 per token)."""
    steps = run_ajet_on_verl_cpu(tmp_path, use_kl_loss=True, save_freq=0)
    assert [s["training/global_step"] for s in steps] == [1, 2]
    for s in steps:
        assert s["actor/grad_norm"] > 0  # a real backward pass
        assert s["critic/advantages/max"] > 0  # rewards differed within a GRPO group
        assert s["rollout_corr/log_ppl_abs_diff"] < 1e-3  # rollout logprobs == trainer logprobs
    assert steps[1]["actor/kl_loss"] > 0  # the policy moved away from the reference after step 1
    assert (tmp_path / "run" / "checkpoints" / "global_step_2" / "actor").is_dir()


def test_verls_asynchronous_trainer_on_the_cpu_trains_a_group_one_version_stale(tmp_path):
    """max_staleness=1 runs verl's v1 trainer (colocate_async, TransferQueue): the second step's
    groups were sampled while the first step trained, so they are one version behind; verl reads
    that from the version tags ajet's agent loop attaches, and the rollout/trainer logprob gap that
    staleness causes is what its rollout correction sees."""
    steps = run_ajet_on_verl_cpu(tmp_path, save_freq=0, **{"async": {"max_staleness": 1}})
    assert [s["training/global_step"] for s in steps] == [1, 2]
    assert all(s["actor/grad_norm"] > 0 for s in steps)
    assert steps[0]["training/off_policy/trajectory_staleness/max"] == 0
    assert steps[0]["rollout_corr/log_ppl_abs_diff"] < 1e-3  # on-policy: same weights, same logprobs
    assert steps[1]["training/off_policy/trajectory_staleness/max"] == 1  # overlapped, within the bound
    assert steps[1]["rollout_corr/log_ppl_abs_diff"] > 1e-3  # sampled by the previous policy
