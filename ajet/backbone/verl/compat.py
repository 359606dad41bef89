"""Fixes for verl 0.9.1 next to the packages ajet installs, loaded in every verl process.

The launcher lists this module in `VERL_USE_EXTERNAL_MODULES`, which `import verl` imports in the
driver and in each Ray worker, before verl builds any model.

- TRL: verl's `apply_monkey_patch` patches TRL's `AutoModelForCausalLMWithValueHead` whenever TRL is
  importable, and TRL 1.x no longer has that class, so building the FSDP actor raises ImportError
  in any environment that also has TRL (ajet's `dev` and `bench` extras install it for the
  benchmark against TRL's GRPOTrainer). The patch only matters for value-head (critic) models,
  which GRPO does not build; verl is told TRL is present only when the class actually exists.
"""

from __future__ import annotations

import importlib.util


def trl_has_value_head_model() -> bool:
    """True when TRL is installed and still provides AutoModelForCausalLMWithValueHead."""
    if importlib.util.find_spec("trl") is None:
        return False
    for module_name in ("trl.experimental.ppo", "trl"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "AutoModelForCausalLMWithValueHead"):
            return True
    return False


def _patch_verl_trl_check() -> None:
    import verl.models.transformers.monkey_patch as monkey_patch

    monkey_patch.is_trl_available = trl_has_value_head_model


_patch_verl_trl_check()
