"""Chat templates that render tool calls, and the fallback for models whose template ignores tools.

Agents (AgentScope's ReActAgent, the OpenAI SDK) send `tools` with every request; the proxy renders
them with the tokenizer's chat template. SmolLM2's template silently drops `tools`, so the model
would never learn a tool exists. `ensure_tool_template` detects that and installs our
Hermes/Qwen-format template, which every ChatML model can read.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

logger = logging.getLogger(__name__)

QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

TemplateChoice = Literal["model", "hermes"]

_PROBE_TOOL_NAME = "ajet_probe_tool_name_7f3a"
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _PROBE_TOOL_NAME,
            "description": "probe",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]


@lru_cache(maxsize=1)
def _chatml_tools_body() -> str:
    return resources.files("ajet.models").joinpath("templates/chatml_tools.jinja").read_text(encoding="utf-8")


def chatml_tool_template(default_system: str | None = None) -> str:
    """Our ChatML + Hermes/Qwen tool-calling template (jinja source).

    `default_system` is the system text used when the conversation has no system message
    (Qwen2.5 uses `QWEN25_DEFAULT_SYSTEM`; the generic fallback uses none).
    """
    value = "none" if default_system is None else json.dumps(default_system)
    return "{%- set default_system = " + value + " -%}\n" + _chatml_tools_body()


def qwen25_chat_template() -> str:
    """The template our exact Qwen2.5 tokenizer ships with (Qwen2.5's system default and tool format)."""
    return chatml_tool_template(QWEN25_DEFAULT_SYSTEM)


def hermes_chat_template() -> str:
    """The tool-calling fallback installed on tokenizers whose own template ignores `tools`."""
    return chatml_tool_template(None)


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's current chat template puts a tool's name into the prompt."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tools=_PROBE_TOOLS, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # noqa: BLE001 - any template error means it cannot render tools either
        logger.debug("chat template failed to render tools: %s", exc)
        return False
    return _PROBE_TOOL_NAME in text


def ensure_tool_template(tokenizer: Any, mode: str = "auto") -> TemplateChoice:
    """Make `tokenizer.chat_template` render tools; return which template is in use.

    mode: "auto" keeps the model's template when it renders tools and installs ours otherwise;
    "model" keeps the model's template whatever it does; "hermes" always installs ours
    (the config key `model.chat_template`).
    """
    if mode not in ("auto", "model", "hermes"):
        raise ValueError(f"model.chat_template must be auto, model or hermes, got {mode!r}")
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if mode == "model" or (mode == "auto" and template_renders_tools(tokenizer)):
        logger.info("chat template for %s: the model's own (renders tools)", name)
        return "model"
    tokenizer.chat_template = hermes_chat_template()
    reason = "forced by model.chat_template=hermes" if mode == "hermes" else "the model's template ignores tools"
    logger.info("chat template for %s: ajet Hermes/Qwen tool template (%s)", name, reason)
    return "hermes"
