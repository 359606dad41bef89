"""Backbones wire every part together: `debug` (one process) and `verl` (Ray + vLLM + verl)."""

from __future__ import annotations

from typing import Any


def run(cfg: Any, launch_args: Any) -> int:
    """Run the experiment described by `cfg` on the backbone chosen by --backbone (or `ajet.backbone`)."""
    backbone = getattr(launch_args, "backbone", None) or cfg.backbone
    if backbone == "debug":
        from ajet.backbone.debug import run_debug

        return run_debug(cfg, launch_args)
    if backbone == "verl":
        from ajet.backbone.verl.launch import run as run_verl

        return run_verl(cfg, launch_args)
    raise ValueError(f"unknown backbone {backbone!r}: choose debug or verl")
