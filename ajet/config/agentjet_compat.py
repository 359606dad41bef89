"""Reading AgentJet's YAML files: its key names that we rename, and those we accept but do not use.

AgentJet (modelscope/AgentJet) configs carry keys for machinery ajet does not have (swarm mode, the
interchange server, the context tracker, Hydra composition). A user moving a YAML over should get a
run, plus one line saying which of those keys had no effect, rather than a wall of "unknown key"
errors. Only the names listed here get that treatment; any other unknown key is still an error.
"""

from __future__ import annotations

import copy
from typing import Any

from ajet.config.merge import pop_path, set_path

# AgentJet name -> ajet name (paths relative to the `ajet:` block).
RENAMED_KEYS: dict[str, str] = {
    "experiment_dir": "trainer_common.experiment_dir",
    "rollout.agentscope_learn_protocol": "rollout.user_workflow",  # the pre-1.0 (astune) name
    "trainer_verl": "verl",
}

# AgentJet keys ajet accepts and ignores. A path names a leaf or a whole subtree.
IGNORED_KEYS: tuple[str, ...] = (
    "context_tracker",
    "task_runner",
    "enable_swarm_mode",
    "enable_interchange_server",
    "enable_experimental_interchange_server",
    "interchange_server",
    "swarm_mode_sample_collection_method",
    "swarm_mode_sample_collection_max_cached_episodes",
    "execute_test",
    "execute_testing_lambda",
    "use_agentscope_protocol",
    "rollout.gamma",
    "rollout.compute_madness_checklist",
    "rollout.agent_madness_termination",
    "rollout.agent_madness_reward",
    "rollout.n_vllm_engine",
    "rollout.max_num_seqs",
    "rollout.name",
    "rollout.mode",
    "rollout.ppo_max_token_len_per_gpu",
    "rollout.chat_template_generate_prompt_type",
    "rollout.multi_turn.max_sample_per_task",
    "rollout.multi_turn.expected_steps",
    "task_reader.env_service.env_action_preference",
    "task_reader.huggingface_dat_repo.http_proxy_address",
    "task_reader.data_generation",
    "task_judge.judge_type",  # task_judge keeps unknown keys anyway; listed so the warning names it
    "trainer_common.fsdp_config",
    "trainer_common.val_pass_n",
    "trainer_common.val_max_num_task_clip_method",
    "trainer_common.val_print_to_markdown_file_path",
    "trainer_common.train_print_to_markdown_file_path",
    "trainer_common.loss_extra_scale_ratio",
    "trainer_common.ulysses_sequence_parallel_size",
    "trainer_common.checkpoint_base_dir",
    "trainer_common.save_trajectory_as_json_file",
    "trainer_common.kl_penalty_type",
    "trainer_common.loss_weight_normalization_episode_level",
    "trainer_common.advantage_estimation_episode_level",
    "trainer_common.algorithm.use_kl_in_reward",
    "trainer_common.optim.optimizer",
    "trainer_common.optim.optimizer_impl",
    "trainer_common.optim.lr_warmup_steps_ratio",
    "trainer_common.optim.total_training_steps",
    "trainer_common.optim.min_lr_ratio",
    "trainer_common.optim.num_cycles",
    "trainer_common.optim.lr_scheduler_type",
    "trainer_common.optim.zero_indexed_step",
    "lora.load_format",
    "lora.layered_summon",
    "debug.debug_vllm_port",
    "debug.debug_vllm_seed",
    "debug.debug_tensor_parallel_size",
)

# Top-level blocks beside `ajet:` that only mean something to Hydra.
IGNORED_TOP_LEVEL: tuple[str, ...] = ("hydra", "defaults")

# AgentJet's built-in classes named in import specs -> ours.
SPEC_ALIASES: dict[str, str] = {
    "ajet.task_judge.env_service_as_judge->EnvServiceJudge": "ajet.judge.env_service->EnvServiceJudge",
}
SPEC_KEYS: tuple[str, ...] = ("rollout.user_workflow", "task_judge.judge_protocol")

# AgentJet's predecessor called the block `astune:`.
TOP_LEVEL_ALIASES: tuple[str, ...] = ("astune",)


def translate_agentjet_keys(
    ajet_block: dict[str, Any], known: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Rename and drop AgentJet-only keys in a user's `ajet:` block.

    known: the packaged defaults; a listed key that ajet has since adopted (it is in `known`) is
    kept, so the lists here never shadow a real key.
    Returns (translated block, ignored key paths, "old -> new" renames). The input is not modified.
    A renamed key never overwrites the new name when both are given: the new name wins.
    """
    block = copy.deepcopy(ajet_block)
    renames: list[str] = []
    for old, new in RENAMED_KEYS.items():
        found, value = pop_path(block, old)
        if not found:
            continue
        renames.append(f"{old} -> {new}")
        already = _get_path(block, new)
        if already is _MISSING:
            set_path(block, new, value)
    for path in SPEC_KEYS:
        spec = _get_path(block, path)
        if isinstance(spec, str) and spec.strip() in SPEC_ALIASES:
            set_path(block, path, SPEC_ALIASES[spec.strip()])
            renames.append(f"{path}: {spec.strip()} -> {SPEC_ALIASES[spec.strip()]}")
    adopted = {path for path in IGNORED_KEYS if known is not None and _get_path(known, path) is not _MISSING}
    ignored = [path for path in IGNORED_KEYS if path not in adopted and pop_path(block, path)[0]]
    return block, ignored, renames


_MISSING = object()


def _get_path(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
