"""bench/algorithms.py: the pieces its measurement relies on (never speed)."""

from __future__ import annotations

import pytest
from bench_helpers import load_bench_module

from ajet.schema import Sample


@pytest.fixture(scope="module")
def bench():
    yield from load_bench_module("algorithms.py")


def _sample(task_id: str, reward: float) -> Sample:
    return Sample(input_ids=[1, 2], loss_mask=[0, 1], rollout_logprobs=[0.0, -0.1], token_versions=[-1, 0],
                  task_id=task_id, episode_id=f"{task_id}-{reward}", reward=reward)


def test_zero_variance_split_groups_the_batch_by_task(bench):
    samples = [_sample("a", 0.0), _sample("b", 1.0), _sample("a", 1.0), _sample("b", 1.0), _sample("c", 0.5)]
    informative, flat = bench.zero_variance_split(samples, [0.0] * len(samples))
    assert informative == [0, 2] and flat == [1, 3, 4]


def test_every_algorithm_of_the_table_is_a_valid_config(bench, tmp_path):
    from ajet.algo import check_algorithm_names
    from ajet.testing.charset_task import build_char_model

    model = build_char_model(tmp_path / "m")
    args = bench.argparse.Namespace(batch=2, group=4, steps=1, lr=1e-3, max_num_gen_batches=2, judge="CharSetPassJudge")
    for name, algorithm in bench.ALGORITHMS.items():
        for dynamic in (False, True):
            root = tmp_path / f"{name}-{dynamic}"
            root.mkdir()
            cfg = bench.config(root, model, args, algorithm, dynamic, seed=0)
            check_algorithm_names(cfg.trainer_common.algorithm)
            assert cfg.trainer_common.algorithm.filter_groups.enable is dynamic
    assert bench.markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
