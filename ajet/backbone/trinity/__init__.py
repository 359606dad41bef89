"""The Trinity-RFT backbone (`--backbone=trinity`): Trinity's explorer runs ajet's workflows on its
vLLM rollout engines, its trainer (verl FSDP) updates the policy.

- config_translation: ajet YAML -> Trinity config (pure; no Trinity import)
- taskset: ajet Tasks as the JSONL taskset Trinity's file reader loads
- server_engine: an ajet Engine over the completions endpoint of Trinity's vLLM server (token ids)
- experiences: tracker samples -> Trinity Experiences (imports trinity)
- workflow: `AjetTrinityWorkflow`, the Trinity workflow playing one ajet episode per run (imports trinity)
- logs: reading Trinity's log files after a run
- launch: `run(cfg, options)`, importable without trinity (it names the install)
"""

from ajet.backbone.trinity.config_translation import WORKFLOW_TYPE, TrinityPaths, check_config, translate_config

__all__ = ["WORKFLOW_TYPE", "TrinityPaths", "check_config", "translate_config"]
