"""The rollout stack a run builds from its config: every rollout setting reaches the part it governs."""

from __future__ import annotations

import pytest

from ajet.testing.config import make_config
from ajet.training.stack import build_rollout_stack


@pytest.mark.parametrize("override", [False, True])
def test_the_proxy_follows_the_rollout_policies_of_the_config(override):
    cfg = make_config(
        "model.path=builtin:tiny-qwen2-random",
        f"rollout.allow_request_sampling_override={str(override).lower()}",
        "rollout.force_disable_toolcalls=true",
        "task_judge.judge_protocol=null",
    )
    stack = build_rollout_stack(cfg)
    try:
        assert stack.proxy.allow_request_sampling_override is override
        assert stack.proxy.disable_tool_calls is True
        assert stack.shares_weights and stack.engine.policy_version == 0
    finally:
        stack.close()
