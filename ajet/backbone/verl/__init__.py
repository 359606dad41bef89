"""The verl backbone (`--backbone=verl`): verl's GRPO trainer over Ray, vLLM rollout servers, and
ajet's workflows running inside verl's agent loops.

- config_translation: ajet YAML -> verl config keys (pure; no verl import)
- agent_loop: `AjetAgentLoop`, registered in verl as "ajet_agent" (imports verl)
- batch: tracker samples -> verl DataProto (imports verl when called)
- launch: `run(cfg, options)`, importable without verl (it explains how to install it)
"""

from ajet.backbone.verl.config_translation import (
    AGENT_LOOP_NAME,
    VerlConfigError,
    translate_config,
)

__all__ = ["AGENT_LOOP_NAME", "VerlConfigError", "translate_config"]
