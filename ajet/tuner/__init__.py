"""The per-episode tuner handed to workflows (see ajet.tuner.tuner)."""

from ajet.tuner.tuner import AjetTuner, OaiBaseUrlApiKey

__all__ = ["AjetTuner", "OaiBaseUrlApiKey"]
