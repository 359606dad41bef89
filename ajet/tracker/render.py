"""Chat-template rendering of OpenAI-format messages, and the message normalisation it needs.

Agent libraries send the same conversation in different shapes: AgentScope's formatters and
LangChain send content as a list of `{"type": "text", "text": ...}` parts, some send `content: None`
next to tool calls, and messages carry library-specific extra keys. `normalize_messages` maps all of
these to one shape so that (a) the template renders them and (b) two requests carrying the same
conversation compare equal.
"""

from __future__ import annotations

import weakref
from typing import Any

Message = dict[str, Any]


def content_text(content: Any) -> str:
    """Flatten OpenAI content (str, None, or a list of parts) to text; non-text parts are dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                pieces.append(str(part.get("text", "")))
        return "".join(pieces)
    return str(content)


def normalize_message(message: Message) -> Message:
    """One message in the shape chat templates expect; unknown keys are dropped."""
    role = message.get("role", "user")
    out: Message = {"role": role, "content": content_text(message.get("content"))}
    if role == "assistant" and message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            fn = call.get("function", call)
            calls.append(
                {
                    "id": call.get("id", ""),
                    "type": "function",
                    # Arguments stay as sent (usually a JSON string): ajet's and Qwen2.5's templates print a
                    # string verbatim, and re-serialising would change the tokens the model sees.
                    "function": {"name": fn.get("name", ""), "arguments": fn.get("arguments", {})},
                }
            )
        out["tool_calls"] = calls
    if role == "tool":
        if message.get("tool_call_id") is not None:
            out["tool_call_id"] = message["tool_call_id"]
        if message.get("name") is not None:
            out["name"] = message["name"]
    return out


def normalize_messages(messages: list[Message]) -> list[Message]:
    return [normalize_message(m) for m in messages]


def same_assistant_turn(returned: Message, resent: Message) -> bool:
    """Whether `resent` (from a later request) is the assistant message the proxy returned.

    Agents rewrite what they store (strip whitespace, re-serialise arguments, drop `content: None`),
    so this compares role, stripped text and the tool-call ids, which the proxy made unique.
    """
    if resent.get("role") != "assistant":
        return False
    if content_text(returned.get("content")).strip() != content_text(resent.get("content")).strip():
        return False
    returned_ids = [c.get("id") for c in returned.get("tool_calls") or []]
    resent_ids = [c.get("id") for c in resent.get("tool_calls") or []]
    return returned_ids == resent_ids


class ChatRenderer:
    """Renders normalised messages to token ids with the tokenizer's chat template.

    Renders text first and encodes it without adding special tokens: the template already wrote
    them, and `apply_chat_template(tokenize=True)` changed return type across transformers versions.
    Encoding goes straight to the Rust backend of a fast tokenizer (the same ids as
    `tokenizer.encode`, without transformers' per-call Python wrapping).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def render_text(self, messages: list[Message], tools: list[dict] | None, *, add_generation_prompt: bool) -> str:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if tools:
            kwargs["tools"] = tools
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_ids(self, messages: list[Message], tools: list[dict] | None, *, add_generation_prompt: bool) -> list[int]:
        return self.encode(self.render_text(messages, tools, add_generation_prompt=add_generation_prompt))

    def splits_at(self, token_id: int) -> str | None:
        """The text of `token_id` if the tokenizer always cuts text at it, else None.

        True of special (added, non-stripping) tokens such as `<|im_end|>`: encode(a + t + b) ==
        encode(a) + [id] + encode(b), so the tokens after it can be encoded on their own.
        """
        return _splits_at(self.tokenizer, token_id)


# tokenizer -> {token id: splits_at result}; weak, so a dropped tokenizer's entry goes with it.
_SPLIT_CACHE: weakref.WeakKeyDictionary[Any, dict[int, str | None]] = weakref.WeakKeyDictionary()


def _splits_at(tokenizer: Any, token_id: int) -> str | None:
    known = _SPLIT_CACHE.setdefault(tokenizer, {})
    if token_id not in known:
        text = tokenizer.convert_ids_to_tokens(token_id)
        encode = ChatRenderer(tokenizer).encode
        # Probes around the token: text before and after it, with and without spaces and newlines
        # (a token that strips neighbouring whitespace, or merges with it, fails one of them).
        known[token_id] = text if isinstance(text, str) and all(
            encode(a + text + b) == encode(a) + [token_id] + encode(b) for a, b in (("x", "\ny"), ("a ", " b"), ("1\n", "\n\n2"))
        ) else None
    return known[token_id]


def end_of_turn_id(tokenizer: Any, token: str = "<|im_end|>") -> int:
    """The id that closes an assistant turn: `<|im_end|>` for ChatML templates, else EOS.

    Looked up with convert_tokens_to_ids and checked by the reverse mapping (an unknown token maps to
    unk): `get_vocab()` would build a 150k-entry dict, about half a second, on every call.
    """
    token_id = tokenizer.convert_tokens_to_ids(token)
    if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token:
        return token_id
    return tokenizer.eos_token_id
