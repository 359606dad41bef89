"""Environment services: tasks whose environments live behind an HTTP service (see `client` for the protocol)."""

from ajet.env_service.client import (
    METADATA_KEY,
    EnvServiceClient,
    EnvServiceError,
    Evaluation,
    StepResult,
    bind_env,
)

__all__ = ["METADATA_KEY", "EnvServiceClient", "EnvServiceError", "Evaluation", "StepResult", "bind_env"]
