"""Merge an episode's calls into training samples (prefix merge), then apply the token budgets.

Walking the calls in order, a call whose prompt_ids start with an existing sample's ids extends
that sample: the tokens between (tool results, user turns, the generation prompt) get loss_mask 0,
the sampled reply gets loss_mask 1 with the engine's logprobs and policy versions. Any other call
starts a new sample whose whole prompt has mask 0. The n choices of one request share a prompt, so
each starts or extends its own branch; a sample extended once is no longer a prefix of its sibling
branches' later calls, so no sampled token is ever trained twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ajet.schema import Sample
from ajet.tracker.call import LLMCall


@dataclass
class _Building:
    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    prompt_length: int = 0
    call_indices: list[int] = field(default_factory=list)

    def append(self, ids: Sequence[int], *, sampled: bool, logprobs: Sequence[float] = (), versions: Sequence[int] = ()) -> None:
        self.input_ids.extend(ids)
        if sampled:
            self.loss_mask.extend([1] * len(ids))
            self.logprobs.extend(float(x) for x in logprobs)
            self.versions.extend(int(v) for v in versions)
        else:
            self.loss_mask.extend([0] * len(ids))
            self.logprobs.extend([0.0] * len(ids))
            self.versions.extend([-1] * len(ids))


def merge_calls(calls: Sequence[LLMCall]) -> list[_Building]:
    """The untruncated merge described in the module docstring."""
    built: list[_Building] = []
    for index, call in enumerate(calls):
        parent = _longest_prefix(built, call.prompt_ids)
        if parent is None:
            parent = _Building(prompt_length=len(call.prompt_ids))
            parent.append(call.prompt_ids, sampled=False)
            built.append(parent)
        else:
            parent.append(call.prompt_ids[len(parent.input_ids) :], sampled=False)
        versions = call.response_versions or [-1] * len(call.response_ids)
        parent.append(call.response_ids, sampled=True, logprobs=call.response_logprobs, versions=versions)
        parent.call_indices.append(index)
    return built


def _longest_prefix(built: list[_Building], prompt_ids: list[int]) -> _Building | None:
    best = None
    for candidate in built:
        n = len(candidate.input_ids)
        if n <= len(prompt_ids) and (best is None or n > len(best.input_ids)) and prompt_ids[:n] == candidate.input_ids:
            best = candidate
    return best


def build_samples(
    calls: Sequence[LLMCall],
    *,
    task_id: str,
    episode_id: str,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    max_total_tokens: int | None = None,
) -> list[Sample]:
    """Merged samples, each cut to the budgets (see EpisodeLimits) with `truncated=True` when cut.

    A too-long first prompt keeps its last `max_prompt_tokens` tokens (the ones nearest the reply);
    the response part (everything after the first prompt) and the whole are cut at the end.
    metadata: prompt_length (tokens before the first sampled reply), num_calls, call_indices,
    finish_reason (of the sample's last call: "length" when max tokens stopped that reply).
    """
    samples: list[Sample] = []
    for b in merge_calls(calls):
        ids, mask, lps, vers = b.input_ids, b.loss_mask, b.logprobs, b.versions
        prompt_len = b.prompt_length
        truncated = False
        if max_prompt_tokens is not None and prompt_len > max_prompt_tokens:
            cut = prompt_len - max_prompt_tokens
            ids, mask, lps, vers = ids[cut:], mask[cut:], lps[cut:], vers[cut:]
            prompt_len = max_prompt_tokens
            truncated = True
        if max_response_tokens is not None and len(ids) - prompt_len > max_response_tokens:
            end = prompt_len + max_response_tokens
            ids, mask, lps, vers = ids[:end], mask[:end], lps[:end], vers[:end]
            truncated = True
        if max_total_tokens is not None and len(ids) > max_total_tokens:
            ids, mask, lps, vers = ids[:max_total_tokens], mask[:max_total_tokens], lps[:max_total_tokens], vers[:max_total_tokens]
            prompt_len = min(prompt_len, max_total_tokens)
            truncated = True
        samples.append(
            Sample(
                input_ids=list(ids),
                loss_mask=list(mask),
                rollout_logprobs=list(lps),
                token_versions=list(vers),
                task_id=task_id,
                episode_id=episode_id,
                truncated=truncated,
                metadata={
                    "prompt_length": prompt_len,
                    "num_calls": len(b.call_indices),
                    "call_indices": list(b.call_indices),
                    "finish_reason": calls[b.call_indices[-1]].finish_reason if b.call_indices else None,
                },
            )
        )
    return samples
