"""From the tracker's samples to verl's batch layout.

A `Sample` is one flat token sequence with a loss mask; verl wants it split into a prompt (everything
before the first sampled token, left-padded) and a response (the rest: sampled turns and the tool or
user turns between them, right-padded), with `response_mask` = the loss mask of the response part:

    input_ids:      | pad pad p p p p | r r r t t r r pad pad |
    attention_mask: |  0   0  1 1 1 1 | 1 1 1 1 1 1 1  0   0  |
    response_mask:                    | 1 1 1 0 0 1 1  0   0  |   (t: tool tokens, not trained)
    rm_scores:                        | 0 0 0 0 0 0 R  0   0  |   (reward at the last response token)

This is the layout verl's own agent-loop worker produces (`AgentLoopWorker._agent_loop_postprocess`
and `_postprocess`); tests/test_verl_backbone.py checks the two agree token for token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ajet.schema import Sample


@dataclass
class Trajectory:
    """One sample cut where verl cuts it. All response lists have the same length."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    prompt_truncated: bool = False
    response_truncated: bool = False


def split_sample(sample: Sample, max_prompt_len: int, max_response_len: int) -> Trajectory:
    """Cut `sample` at its first trained token; fit the prompt (keeping its end, as verl does) and
    the response (keeping its start) into the given lengths.

    A sample with no trained token is all prompt and has an empty response.
    """
    first = next((i for i, m in enumerate(sample.loss_mask) if m), len(sample.input_ids))
    prompt = list(sample.input_ids[:first])
    response = list(sample.input_ids[first:])
    mask = [int(m) for m in sample.loss_mask[first:]]
    logprobs = [float(x) for x in sample.rollout_logprobs[first:]]
    prompt_truncated = len(prompt) > max_prompt_len
    if prompt_truncated:
        prompt = prompt[len(prompt) - max_prompt_len :]
    response_truncated = len(response) > max_response_len
    if response_truncated:
        response, mask, logprobs = response[:max_response_len], mask[:max_response_len], logprobs[:max_response_len]
    return Trajectory(prompt, response, mask, logprobs, prompt_truncated, response_truncated)


def samples_to_dataproto(
    samples: Sequence[Sample], tokenizer: Any, max_prompt_len: int, max_response_len: int
) -> Any:
    """A `verl.DataProto` of B = len(samples) rows, P = max_prompt_len, R = max_response_len.

    batch:
        prompts          [B, P]    int64, left-padded with the tokenizer's pad id
        responses        [B, R]    int64, right-padded
        response_mask    [B, R]    int64, the loss mask of the response (0 on padding)
        input_ids        [B, P+R]  int64, prompts ++ responses
        attention_mask   [B, P+R]  int64, 1 on real tokens
        position_ids     [B, P+R]  int64, verl's compute_position_id_with_mask(attention_mask)
        rollout_log_probs [B, R]   float32, behaviour logprobs (0 where response_mask is 0)
        rm_scores        [B, R]    float32, the sample's reward at its last response token: the
                                   outcome reward verl's trainer reads (`extract_reward`)
    non_tensor_batch (object arrays of length B):
        uid            the task id: GRPO groups rows with equal uid
        episode_id, is_success, __num_turns__
    """
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    if not samples:
        raise ValueError("samples_to_dataproto needs at least one sample")
    pad_id = pad_token_id(tokenizer)
    n = len(samples)
    prompts = torch.full((n, max_prompt_len), pad_id, dtype=torch.int64)
    prompt_attn = torch.zeros((n, max_prompt_len), dtype=torch.int64)
    responses = torch.full((n, max_response_len), pad_id, dtype=torch.int64)
    response_attn = torch.zeros((n, max_response_len), dtype=torch.int64)
    response_mask = torch.zeros((n, max_response_len), dtype=torch.int64)
    logprobs = torch.zeros((n, max_response_len), dtype=torch.float32)
    scores = torch.zeros((n, max_response_len), dtype=torch.float32)
    for row, sample in enumerate(samples):
        traj = split_sample(sample, max_prompt_len, max_response_len)
        p, r = len(traj.prompt_ids), len(traj.response_ids)
        if p:
            prompts[row, max_prompt_len - p :] = torch.tensor(traj.prompt_ids, dtype=torch.int64)
            prompt_attn[row, max_prompt_len - p :] = 1
        if r:
            responses[row, :r] = torch.tensor(traj.response_ids, dtype=torch.int64)
            response_attn[row, :r] = 1
            response_mask[row, :r] = torch.tensor(traj.response_mask, dtype=torch.int64)
            logprobs[row, :r] = torch.tensor(traj.response_logprobs, dtype=torch.float32)
        # verl indexes the last response token as (response length - 1); -1 (empty) wraps to the
        # last column, where the row's response_mask is 0 anyway.
        scores[row, r - 1] = float(sample.reward)
    attention_mask = torch.cat([prompt_attn, response_attn], dim=1)
    batch = {
        "prompts": prompts,
        "responses": responses,
        "response_mask": response_mask,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": compute_position_id_with_mask(attention_mask),
        "rollout_log_probs": logprobs,
        "rm_scores": scores,
    }
    non_tensor = {
        "uid": _objects([s.task_id for s in samples]),
        "episode_id": _objects([s.episode_id for s in samples]),
        "is_success": _objects([bool(s.is_success) for s in samples]),
        "__num_turns__": np.array([int(s.metadata.get("turns", 0)) for s in samples], dtype=np.int32),
    }
    return DataProto.from_dict(tensors=batch, non_tensors=non_tensor, meta_info={"reward_extra_keys": []})


def pad_token_id(tokenizer: Any) -> int:
    """The id verl pads with (tokenizer.pad uses pad_token_id); eos for tokenizers without one."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
