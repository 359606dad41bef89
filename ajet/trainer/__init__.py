"""The policy update (GRPO/PPO loss over recorded samples), LoRA and checkpoints.

The training loop itself lives in the backbone; these are the pieces it calls.
"""

from ajet.trainer.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
)
from ajet.trainer.logprobs import sequence_logprobs
from ajet.trainer.policy_trainer import PolicyTrainer

__all__ = ["PolicyTrainer", "latest_checkpoint", "list_checkpoints", "prune_checkpoints", "sequence_logprobs"]
