"""Overlong handling: DAPO's soft penalty on episodes near the length limit, and the option that
keeps samples cut by a limit out of the loss (their reward still counts in the group)."""

from __future__ import annotations

import pytest

from ajet.rollout.groups import EpisodeGroup
from ajet.rollout.metrics import summarize_episodes
from ajet.schema import EpisodeResult, Sample, Task
from ajet.testing.config import make_config
from ajet.tracker.call import LLMCall
from ajet.tracker.samples import build_samples
from ajet.training.batch import build_training_batch
from ajet.training.overlong import (
    apply_overlong_penalty,
    is_truncated_completion,
    response_length,
)


def _sample(prompt: int, response: int, reward: float, *, finish_reason: str = "stop", truncated: bool = False) -> Sample:
    n = prompt + response
    return Sample(
        input_ids=list(range(n)),
        loss_mask=[0] * prompt + [1] * response,
        rollout_logprobs=[0.0] * n,
        token_versions=[-1] * prompt + [0] * response,
        task_id="t",
        episode_id="e",
        reward=reward,
        truncated=truncated,
        metadata={"prompt_length": prompt, "finish_reason": finish_reason},
    )


def _episode(*samples: Sample, reward: float) -> EpisodeResult:
    return EpisodeResult(task=Task(main_query="q", task_id="t"), episode_id="e", repeat_index=0, samples=list(samples),
                         reward=reward, is_success=reward > 0)


def test_overlong_penalty_shapes_episode_and_sample_rewards_from_the_longest_sample():
    overlong = make_config(
        "trainer_common.algorithm.overlong_buffer.enable=true", "trainer_common.algorithm.overlong_buffer.len=16",
        "data.max_response_length=64",
    ).trainer_common.algorithm.overlong_buffer
    short = _episode(_sample(10, 40, 1.0), reward=1.0)  # 40 <= 48: untouched
    near = _episode(_sample(10, 20, 1.0), _sample(10, 56, 1.0), reward=1.0)  # longest: 56 -> -0.5
    at_limit = _episode(_sample(10, 64, 0.0, truncated=True), reward=0.0)  # -1.0
    apply_overlong_penalty([short, near, at_limit], overlong, 64)
    assert short.reward == 1.0 and short.metrics["overlong_penalty"] == 0.0
    assert near.reward == pytest.approx(0.5) and [s.reward for s in near.samples] == pytest.approx([0.5, 0.5])
    assert at_limit.reward == pytest.approx(-1.0) and at_limit.samples[0].reward == pytest.approx(-1.0)
    summary = summarize_episodes([short, near, at_limit])
    assert summary["rollout/overlong_penalty_mean"] == pytest.approx(-0.5)
    assert summary["rollout/overlong_penalized_episodes"] == 2


def test_overlong_penalty_is_off_by_default():
    episode = _episode(_sample(10, 2048, 1.0), reward=1.0)
    cfg = make_config()
    apply_overlong_penalty([episode], cfg.trainer_common.algorithm.overlong_buffer, cfg.data.max_response_length)
    assert episode.reward == 1.0 and "overlong_penalty" not in episode.metrics
    assert "rollout/overlong_penalty_mean" not in summarize_episodes([episode])


def test_truncated_completions_are_cut_samples_or_replies_stopped_at_max_tokens():
    assert not is_truncated_completion(_sample(3, 4, 1.0))
    assert is_truncated_completion(_sample(3, 4, 1.0, finish_reason="length"))
    assert is_truncated_completion(_sample(3, 4, 1.0, truncated=True))
    assert response_length(_sample(3, 4, 1.0)) == 4


def test_the_tracker_records_the_last_calls_finish_reason():
    calls = [
        LLMCall(prompt_ids=[1, 2], response_ids=[3], response_logprobs=[-0.1], response_versions=[0], finish_reason="stop"),
        LLMCall(prompt_ids=[1, 2, 3, 4], response_ids=[5, 6], response_logprobs=[-0.1, -0.2], response_versions=[0, 0],
                finish_reason="length"),
    ]
    (sample,) = build_samples(calls, task_id="t", episode_id="e")
    assert sample.metadata["finish_reason"] == "length" and is_truncated_completion(sample)


def test_mask_truncated_completions_leaves_cut_samples_out_but_keeps_their_reward_in_the_baseline():
    task = Task(main_query="q", task_id="t")
    cut = _episode(_sample(3, 4, 0.0, finish_reason="length"), reward=0.0)
    done = _episode(_sample(3, 4, 1.0), reward=1.0)
    group = EpisodeGroup(task, [cut, done], launch_index=0, launch_version=0)
    plain = build_training_batch([group], make_config().trainer_common.algorithm)
    masked = build_training_batch([group], make_config("trainer_common.algorithm.mask_truncated_completions=true").trainer_common.algorithm)
    assert len(plain.samples) == 2 and plain.masked_truncated == 0
    assert masked.samples == [done.samples[0]] and masked.masked_truncated == 1
    # the remaining sample keeps the advantage it had against the cut one
    assert masked.advantages == pytest.approx([plain.advantages[1]]) and masked.advantages[0] > 0
