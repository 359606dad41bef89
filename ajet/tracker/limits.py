"""Token and turn budgets of one episode, enforced by the proxy at request time and by the tracker
when it cuts samples."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpisodeLimits:
    """None means unlimited.

    max_turns: model requests per episode (a request refused for its prompt length counts too);
        further requests get an empty reply with finish_reason "length" (see ajet.proxy.server)
        instead of reaching the engine.
    max_prompt_tokens: a request whose prompt is longer gets the same empty "length" reply; in
        samples, a first prompt longer than this is left-truncated and the sample flagged.
    max_response_tokens_per_turn: caps each request's max_tokens.
    max_total_tokens: prompt + reply of a request (caps max_tokens) and length of a sample.
    max_response_tokens: per sample, everything after its first prompt (sampled, tool and user
        tokens together, as in verl's multi-turn layout); longer samples are cut and flagged.
    """

    max_turns: int | None = None
    max_prompt_tokens: int | None = None
    max_response_tokens_per_turn: int | None = None
    max_total_tokens: int | None = None
    max_response_tokens: int | None = None
