"""Build a request's prompt ids by splicing in the tokens the model actually sampled earlier.

Why: an agent sends the whole conversation each turn, as text. Re-rendering it with the chat
template re-tokenises the model's own earlier replies, and the result often differs from what was
sampled (BPE merges across a boundary, `"arguments"` re-serialised with other whitespace, content
stripped by the agent). Training on the re-tokenised version would teach the model tokens it never
produced and break the prefix that lets several turns merge into one sample. So, as AgentJet's
timeline merging and AReaL's client-side tracking do, the model's tokens are kept and only the new
(tool / user / generation-prompt) tokens come from the template.

The rule, for a request with normalised messages M:
1. Find the earlier call c with the longest request messages that are a prefix of M, whose tools
   are the same, and whose returned assistant message is M[k] (k = len(c.messages); compared by
   stripped text and tool-call ids, see `same_assistant_turn`).
2. P = render(M[:k+1]) (through that assistant turn, no generation prompt) and
   F = render(M, add_generation_prompt=True). If F starts with P and P contains the end-of-turn
   token, the prompt is
       c.prompt_ids + c.response_ids (+ end token if the reply was cut before it)
       + P[after its last end token]            (e.g. the "\n" after <|im_end|>)
       + F[len(P):]                             (tool/user turns, then the generation prompt)
3. Otherwise the plain render F is used and the miss is reported (a new sample starts there).

How (same ids, less work): when the tokenizer always cuts text at the end token (a special token,
see ChatRenderer.splits_at), encode(F) is encode(F's text up to its end token) + [end] + encode(the
rest), so the two renders are compared as text and only the text after the assistant turn's end
token is encoded: one short encode per request instead of two of the whole conversation, which grew
with every turn. Other tokenizers take the token-level path spelled out above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ajet.tracker.call import LLMCall
from ajet.tracker.render import ChatRenderer, Message, same_assistant_turn


@dataclass
class PromptPlan:
    """prompt_ids for the engine; source: index of the call spliced from (None for a plain render);
    miss: why a matching earlier call could not be spliced (None when spliced or nothing matched)."""

    prompt_ids: list[int]
    source: int | None = None
    miss: str | None = None


def find_parent_call(calls: Sequence[LLMCall], messages: list[Message], tools: list[dict] | None) -> int | None:
    """Index of the earlier call this request continues (step 1 of the module docstring)."""
    best: int | None = None
    best_len = -1
    for index, call in enumerate(calls):
        k = len(call.messages)
        if k >= len(messages) or k <= best_len:
            continue
        if (call.tools or None) != (tools or None):
            continue
        if call.messages != messages[:k]:
            continue
        if not same_assistant_turn(call.assistant_message, messages[k]):
            continue
        best, best_len = index, k
    return best


def plan_prompt(
    calls: Sequence[LLMCall],
    messages: list[Message],
    tools: list[dict] | None,
    renderer: ChatRenderer,
    end_token_id: int,
) -> PromptPlan:
    """Prompt ids for `messages` (already normalised), spliced onto earlier sampled tokens if possible."""
    parent_index = find_parent_call(calls, messages, tools)
    full_text = renderer.render_text(messages, tools, add_generation_prompt=True)
    if parent_index is None:
        return PromptPlan(renderer.encode(full_text))

    parent = calls[parent_index]
    k = len(parent.messages)
    through_text = renderer.render_text(messages[: k + 1], tools, add_generation_prompt=False)
    end_text = renderer.splits_at(end_token_id)
    if end_text is not None:
        if not full_text.startswith(through_text):
            return PromptPlan(renderer.encode(full_text), miss="render_not_prefix")
        cut = through_text.rfind(end_text)
        if cut < 0:
            return PromptPlan(renderer.encode(full_text), miss="no_end_token")
        # = through_turn[end_pos + 1:] + full[len(through_turn):] of the token-level path below.
        after_turn = renderer.encode(full_text[cut + len(end_text) :])
    else:
        full = renderer.encode(full_text)
        through_turn = renderer.encode(through_text)
        if full[: len(through_turn)] != through_turn:
            return PromptPlan(full, miss="render_not_prefix")
        try:
            end_pos = len(through_turn) - 1 - through_turn[::-1].index(end_token_id)
        except ValueError:
            return PromptPlan(full, miss="no_end_token")
        after_turn = through_turn[end_pos + 1 :] + full[len(through_turn) :]

    sampled = list(parent.prompt_ids) + list(parent.response_ids)
    if not parent.response_ids or parent.response_ids[-1] != end_token_id:
        # The reply was cut (max_tokens) before its end token; the template closes the turn.
        sampled.append(end_token_id)
    return PromptPlan(sampled + after_turn, source=parent_index)
