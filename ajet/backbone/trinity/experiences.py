"""An ajet episode as Trinity Experiences, token for token (imports trinity-rft).

Each tracker sample (one merged multi-turn token sequence, as ajet builds it) becomes one multi-turn
Experience, cut where Trinity cuts: the prompt is everything before the first sampled token.

    Sample:      input_ids  | p p p p | r r t t r r |      loss_mask | 0 0 0 0 | 1 1 0 0 1 1 |
    Experience:  tokens = input_ids, prompt_length = 4,
                 action_mask = loss_mask[4:], logprobs = rollout_logprobs[4:] (0 where masked),
                 reward = the sample's reward, eid.step = the sample's index in the episode

Trinity's workflow runner fills `eid.batch`, `eid.task` (the task) and `eid.run` (which repeat), so an
episode is one run and GRPO groups its runs by task; `multi_step_grpo` takes each run's last
experience's reward (the episode's: ajet gives every sample the episode reward, or the last value of
a per-sample list) and gives every experience of the run the run's advantage, as ajet's own GRPO does.

An episode without a trained token (it failed before its first model call, or every call was
refused) still counts in its group: one experience of its first prompt and one padding token, masked
out, with the episode's reward (0 for a failure), so it adds to the group's statistics and nothing
to the loss.
"""

from __future__ import annotations

from typing import Any

from trinity.common.experience import EID, Experience

from ajet.schema import EpisodeResult, Sample


def sample_to_experience(sample: Sample, step: int, info: dict[str, Any] | None = None,
                         metrics: dict[str, float] | None = None) -> Experience:
    """One sample as a multi-turn Experience (see the module docstring); needs a trained token."""
    first = first_trained_index(sample)
    if first is None:
        raise ValueError(f"sample {sample.episode_id!r} has no trained token; it cannot be an experience")
    return Experience(
        eid=EID(step=step),
        tokens=list(sample.input_ids),
        prompt_length=first,
        logprobs=[float(x) for x in sample.rollout_logprobs[first:]],
        action_mask=[bool(m) for m in sample.loss_mask[first:]],
        reward=float(sample.reward),
        # ajet's budgets cut the prompt or the response (Sample.truncated); Trinity's truncate_status
        # names one of the two, so the flag travels in info.
        info={**(info or {}), "ajet_truncated": bool(sample.truncated)},
        metrics=dict(metrics or {}),
    )


def episode_to_experiences(result: EpisodeResult, *, fallback_prompt_ids: list[int], pad_token_id: int) -> list[Experience]:
    """The episode's samples with a trained token, as Experiences in sample order (steps 0, 1, ...).

    `fallback_prompt_ids`: the rendered first prompt, used only for an episode without any trained
    token (see the module docstring). Episode-level metrics go on the last experience only, so
    Trinity's per-run aggregation counts each episode once.
    """
    error = (result.error or result.judge_error or "").splitlines()
    info = {
        "ajet_episode_id": result.episode_id,
        "ajet_task_id": result.task_id,
        "ajet_error": error[0] if error else "",
    }
    trainable = [s for s in result.samples if first_trained_index(s) is not None]
    experiences = [sample_to_experience(sample, step, info) for step, sample in enumerate(trainable)]
    if not experiences:
        experiences = [
            Experience(
                eid=EID(step=0),
                tokens=list(fallback_prompt_ids) + [int(pad_token_id)],
                prompt_length=len(fallback_prompt_ids),
                logprobs=[0.0],
                action_mask=[False],
                reward=float(result.reward),
                info=dict(info),
            )
        ]
    experiences[-1].metrics = episode_metrics(result)
    return experiences


def episode_metrics(result: EpisodeResult) -> dict[str, float]:
    """What Trinity's monitor shows per episode (averaged over runs), under `ajet/`."""
    stats = result.metrics
    return {
        "ajet/reward": float(result.reward),
        "ajet/success": float(bool(result.is_success)),
        "ajet/failed": float(result.error is not None),
        "ajet/turns": float(stats.get("turns", 0.0)),
        "ajet/tool_calls": float(stats.get("tool_calls", 0.0)),
        "ajet/format_errors": float(stats.get("format_errors", 0.0)),
        "ajet/samples": float(len(result.samples)),
    }


def first_trained_index(sample: Sample) -> int | None:
    """Index of the sample's first sampled (loss-mask 1) token, or None when it has none."""
    return next((i for i, m in enumerate(sample.loss_mask) if m), None)
