"""Running episodes concurrently and turning them into judged, trainable groups."""

from ajet.rollout.runner import RolloutRunner, RolloutSettings

__all__ = ["RolloutRunner", "RolloutSettings"]
