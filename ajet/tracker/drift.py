"""Drift check: the tracked tokens of an episode against a fresh render of its final conversation.

The tracked ids are what the model saw and sampled; the render is what the chat template would
produce from the text the agent kept. They differ when the model's output does not re-tokenise to
itself (odd whitespace in a tool call, BPE merges) or the agent edited its history. Splicing keeps
training exact either way; the report shows where a template-based pipeline (or serving the trained
model behind a plain chat API) would see something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ajet.tracker.call import LLMCall
from ajet.tracker.render import ChatRenderer, Message, normalize_messages

WINDOW = 8  # tokens shown each side of the first mismatch


@dataclass
class DriftReport:
    """drifted: the two sequences differ within the tracked length.
    position: index of the first differing token (None when not drifted).
    tracked_window / rendered_window: the tokens around `position`, decoded."""

    drifted: bool
    position: int | None = None
    tracked_window: str = ""
    rendered_window: str = ""
    tracked_length: int = 0
    rendered_length: int = 0

    def describe(self) -> str:
        if not self.drifted:
            return "no drift"
        return (
            f"token drift at position {self.position} (tracked {self.tracked_length} tokens, rendered "
            f"{self.rendered_length}): tracked {self.tracked_window!r} vs rendered {self.rendered_window!r}"
        )


def check_drift(tokenizer: Any, last_call: LLMCall, final_messages: list[Message] | None = None) -> DriftReport:
    """Compare `last_call.prompt_ids + response_ids` with the render of the final conversation.

    final_messages defaults to the last request's messages plus the reply returned for it. The
    render may run longer than the tracked ids (the template's text after the last end token, or
    turns the agent added after its last call); only a difference within the tracked length counts.
    """
    tracked = list(last_call.prompt_ids) + list(last_call.response_ids)
    if final_messages is None:
        final_messages = list(last_call.messages) + [last_call.assistant_message]
    rendered = ChatRenderer(tokenizer).render_ids(normalize_messages(final_messages), last_call.tools, add_generation_prompt=False)

    position = None
    for i, (a, b) in enumerate(zip(tracked, rendered)):
        if a != b:
            position = i
            break
    if position is None and len(rendered) < len(tracked):
        position = len(rendered)
    if position is None:
        return DriftReport(False, tracked_length=len(tracked), rendered_length=len(rendered))

    lo = max(0, position - WINDOW)
    return DriftReport(
        True,
        position=position,
        tracked_window=tokenizer.decode(tracked[lo : position + WINDOW]),
        rendered_window=tokenizer.decode(rendered[lo : position + WINDOW]),
        tracked_length=len(tracked),
        rendered_length=len(rendered),
    )
