"""The per-episode tuner handed to workflows (see ajet.tuner.tuner)."""

from ajet.tuner.tuner import AjetTuner, AnthropicBaseUrlApiKey, OaiBaseUrlApiKey

__all__ = ["AjetTuner", "AnthropicBaseUrlApiKey", "OaiBaseUrlApiKey"]
