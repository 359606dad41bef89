"""Advantage estimators and policy losses side by side, with and without dynamic sampling.

Every run is the product's own loop (`ajet.training.TrainingLoop`) on the learning-proof task
(ajet/testing/charset_task.py: a tiny random character-level model is rewarded for writing
characters from a target set), with the reward rounded down to quarters (`CharSetLevelsJudge`) or
made pass/fail (`--judge CharSetPassJudge`) so that groups whose episodes all score alike occur, as
with the rewards of real tasks: at first most replies score 0, once the policy has learned most
score 1. (With the proof's continuous reward no two episodes tie, so dynamic sampling would have
nothing to drop.) Same model seeds, task order and steps for every algorithm.

Reported per algorithm x dynamic sampling (median over seeds, min-max in brackets where shown):
reward per step (mean over every fresh episode of the step, trained or dropped by the filter), the
first step whose 3-step mean reaches 0.5, episodes rolled out, rollout and update seconds (steps 2 on:
the first rollout includes the engine's start-up), and the
share of groups without a reward spread. Without dynamic sampling those groups are trained on and
carry no policy gradient: their share of the update's tokens, and (`--measure-grpo`) the measured
share of update time spent on them (gradient passes timed on the full batch and on the batch
without them, before each GRPO update), is the update time dynamic sampling saves.

    python bench/algorithms.py                                  # 6 algorithms x 2 x 2 seeds, 20 steps
    python bench/algorithms.py --algorithms grpo gspo --seeds 0 1 2 --steps 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, summarize, write_results  # noqa: E402

# name -> overrides of trainer_common.algorithm (the comparison's only difference)
ALGORITHMS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "dr_grpo": {"adv_estimator": "dr_grpo", "loss_agg_mode": "seq-mean-token-sum-norm"},
    "rloo": {"adv_estimator": "rloo"},
    "reinforce_plus_plus_baseline": {"adv_estimator": "reinforce_plus_plus_baseline"},
    "gspo": {"policy_loss": {"loss_mode": "gspo"}, "loss_agg_mode": "seq-mean-token-mean"},
    "cispo": {"policy_loss": {"loss_mode": "cispo"}},
}
TASK = "ajet.testing.charset_task"


def config(root: Path, model_dir: Path, args: argparse.Namespace, algorithm: dict[str, Any], dynamic: bool, seed: int):
    """The learning-proof settings (tests/test_learning_proof.py) with `algorithm` and the filter."""
    from ajet.config import load_config
    from ajet.testing.charset_task import write_prompts

    prompts = write_prompts(root / "prompts.jsonl")
    algo = {**algorithm, "filter_groups": {"enable": dynamic, "max_num_gen_batches": args.max_num_gen_batches}}
    conf = {
        "ajet": {
            "experiment_name": "algorithms_bench",
            "model": {"path": str(model_dir), "chat_template": "model"},
            "data": {"train_batch_size": args.batch, "max_prompt_length": 128, "max_response_length": 64, "seed": seed},
            "rollout": {
                "user_workflow": f"{TASK}->CharSetWorkflow",
                "num_repeat": args.group,
                "temperature": 1.0,
                "max_env_worker": 32,
                "max_response_length_in_one_turn": 12,
                "max_model_len": 256,
                "multi_turn": {"max_steps": 1},
            },
            "task_reader": {"type": "dataset_file", "dataset_file": {"training": {"file_path": str(prompts)}}},
            "task_judge": {"judge_protocol": f"{TASK}->{args.judge}"},
            "trainer_common": {
                "total_training_steps": args.steps,
                "save_freq": 0,
                "logger": ["jsonl"],
                "micro_batch_size": 32,
                "optim": {"lr": args.lr, "weight_decay": 0.0, "grad_clip": 1.0},
                "algorithm": algo,
            },
        }
    }
    path = root / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return load_config(path, [])


def zero_variance_split(samples, advantages) -> tuple[list, list]:
    """Indices of the samples in groups with a reward spread, and of the rest (a batch's groups are
    its distinct task ids: one group per task and step without dynamic sampling)."""
    rewards: dict[str, set[float]] = defaultdict(set)
    for s in samples:
        rewards[s.task_id].add(float(s.reward))
    informative = [i for i, s in enumerate(samples) if len(rewards[s.task_id]) > 1]
    flat = [i for i, s in enumerate(samples) if len(rewards[s.task_id]) <= 1]
    return informative, flat


def measuring_loop(loop_cls):
    """A TrainingLoop whose trainer first times gradient passes on the full batch and on the batch
    without its zero-variance groups (no optimizer step: the weights are untouched), then updates."""

    class Measured(loop_cls):
        timings: list[dict[str, float]]

        async def step(self, step):
            if not hasattr(self, "timings"):
                self.timings = []
                trainer, real = self.trainer, self.trainer.train_step

                def timed_train_step(samples, advantages, temperature):
                    informative, _ = zero_variance_split(samples, advantages)
                    t0 = time.perf_counter()
                    trainer.compute_gradients(samples, advantages, temperature)
                    full = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    if informative:
                        trainer.compute_gradients([samples[i] for i in informative], [advantages[i] for i in informative], temperature)
                    kept = time.perf_counter() - t1
                    self.timings.append({"full_s": full, "informative_s": kept})
                    trainer.optimizer.zero_grad(set_to_none=True)
                    return real(samples, advantages, temperature)

                trainer.train_step = timed_train_step
            return await super().step(step)

    return Measured


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """The same table as Markdown lines, for bench/RESULTS.md."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def run_once(args: argparse.Namespace, name: str, dynamic: bool, seed: int) -> dict[str, Any]:
    from ajet.testing.charset_task import build_char_model
    from ajet.training import TrainingLoop

    measure = args.measure_grpo and name == "grpo" and not dynamic
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_char_model(root / "model", seed=seed)
        cfg = config(root, model_dir, args, ALGORITHMS[name], dynamic, seed)
        loop = (measuring_loop(TrainingLoop) if measure else TrainingLoop)(cfg, root / "run")
        t0 = time.perf_counter()
        asyncio.run(loop.run())
        wall = time.perf_counter() - t0
    h = loop.history
    rewards = [m["rollout/reward_mean"] for m in h]
    smooth = [statistics.fmean(rewards[max(0, i - 2) : i + 1]) for i in range(len(rewards))]
    record = {
        "rewards": rewards,
        "wall_s": wall,
        "first_reward": statistics.fmean(rewards[:3]),
        "final_reward": statistics.fmean(rewards[-3:]),
        "step_to_0.5": next((i + 1 for i, r in enumerate(smooth) if r >= 0.5), None),
        "episodes": sum(m["rollout/episodes"] for m in h),
        # from step 2 on: the first step's rollout includes the engine's start-up
        "rollout_s": sum(m["timing/rollout_s"] for m in h[1:]),
        "update_s": sum(m.get("train/update_time", 0.0) for m in h[1:]),
        "zero_variance_share": statistics.fmean(m["filter_groups/zero_variance_share"] for m in h),
        "trained_zero_variance_token_share": statistics.fmean(m["filter_groups/trained_zero_variance_token_share"] for m in h),
        "dropped_groups": sum(m["filter_groups/dropped_groups"] for m in h),
        "cap_reached_steps": sum(m["filter_groups/cap_reached"] for m in h),
    }
    if measure:
        timings = loop.timings
        full = sum(t["full_s"] for t in timings)
        record["measured_update_share_on_zero_variance"] = (full - sum(t["informative_s"] for t in timings)) / full
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="tasks (groups) per step")
    parser.add_argument("--group", type=int, default=8, help="episodes per task")
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--max-num-gen-batches", type=int, default=4, help="dynamic sampling's cap (see default.yaml)")
    parser.add_argument("--judge", default="CharSetLevelsJudge", choices=["CharSetLevelsJudge", "CharSetPassJudge", "CharSetJudge"],
                        help="reward: share rounded down to quarters | pass (share >= 0.25) | the proof's continuous share")
    parser.add_argument("--no-measure-grpo", dest="measure_grpo", action="store_false",
                        help="skip timing the GRPO runs' gradient passes with and without zero-variance groups")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, Any]]] = {}
    load_at_start = os.getloadavg()
    partial = None
    for name in args.algorithms:
        for dynamic in (False, True):
            label = f"{name}{' +DS' if dynamic else ''}"
            runs[label] = [run_once(args, name, dynamic, seed) for seed in args.seeds]
            print(f"{label}: final reward {[round(r['final_reward'], 3) for r in runs[label]]}", flush=True)
            # Each finished comparison is on disk, so a run stopped half-way keeps what it measured.
            if partial is not None:
                partial.unlink(missing_ok=True)
            partial = write_results("algorithms-partial", {"settings": vars(args), "runs": runs})

    checkpoints = sorted({min(args.steps, s) for s in (1, 5, 10, 15, args.steps)})
    rows, summary = [], {}
    for label, rs in runs.items():
        per_step = [statistics.median(r["rewards"][i] for r in rs) for i in range(args.steps)]
        reached = [r["step_to_0.5"] for r in rs]
        s = summary[label] = {
            "reward_per_step_median": per_step,
            **{k: summarize([r[k] for r in rs]) for k in ("final_reward", "episodes", "rollout_s", "update_s",
                                                        "zero_variance_share", "trained_zero_variance_token_share",
                                                        "dropped_groups", "cap_reached_steps")},
            "step_to_0.5": reached,
        }
        rows.append([
            label,
            *[f"{per_step[c - 1]:.2f}" for c in checkpoints],
            f"{s['final_reward']['median']:.3f} ({s['final_reward']['min']:.2f}-{s['final_reward']['max']:.2f})",
            "/".join("-" if x is None else str(x) for x in reached),
            f"{s['episodes']['median']:.0f}",
            f"{s['rollout_s']['median']:.1f}",
            f"{s['update_s']['median']:.1f}",
            f"{100 * s['zero_variance_share']['median']:.0f}%",
            f"{100 * s['trained_zero_variance_token_share']['median']:.0f}%",
        ])
    print_table(
        f"algorithms on the learning-proof task ({args.judge}), {args.steps} steps, {args.batch}x{args.group} "
        f"episodes/step, seeds {args.seeds}, reward = median over seeds",
        ["algorithm", *[f"step {c}" for c in checkpoints], "final (last 3)", "step to 0.5", "episodes",
         "rollout s", "update s", "zero-var groups", "zero-var tokens trained"],
        rows,
    )
    print("\n".join(markdown_table(
        ["algorithm", *[f"step {c}" for c in checkpoints], "final (last 3)", "step to 0.5", "episodes",
         "rollout s", "update s", "zero-var groups", "zero-var tokens trained"], rows)))
    measured = [r["measured_update_share_on_zero_variance"] for r in runs.get("grpo", []) if "measured_update_share_on_zero_variance" in r]
    if measured:
        print(f"grpo without dynamic sampling: measured share of update time on zero-variance groups "
              f"{', '.join(f'{100 * m:.0f}%' for m in measured)} (seeds {args.seeds})")
        summary["grpo"]["measured_update_share_on_zero_variance"] = measured
    env = {**environment(), "load_average_at_start": load_at_start}
    path = write_results("algorithms", {"env": env, "settings": vars(args), "summary": summary, "runs": runs})
    if partial is not None:
        partial.unlink(missing_ok=True)
    print(f"load average at start {load_at_start}, at the end {env['load_average']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
