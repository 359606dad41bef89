"""Asynchronous vs synchronous GRPO training at equal settings, with long-tailed episodes.

Both schedules run the same product code (`ajet.training.TrainingLoop`) on the same toy task
(ajet/testing/charset_task.py: a tiny character-level model learns to favour a set of characters).
Episode lengths have a long tail: one task in `--tail-every` makes `--tail-turns` model calls, the
rest make one. Between two calls an episode waits `--tool-latency` seconds, as an agent waits on a
tool; each latency is its own comparison (latency 0: every second is compute, so on one CPU the
engine and the trainer compete; latency > 0: the tail is waiting, which overlapping can hide).
Reported per schedule, min/median/max over repeats:

- steps/hour over the whole run;
- trainer idle time: seconds the trainer waited for judged groups (`timing/rollout_s`), total and
  as a share of the run;
- final reward (mean of the last 3 steps), so a speed-up that costs learning shows;
- dropped groups, the staleness seen, and the mean model calls per trained episode (dropping stale
  groups drops long episodes first, which a steps/hour figure alone would hide).

    python bench/async_vs_sync.py                      # CPU defaults, about 15 minutes
    python bench/async_vs_sync.py --steps 20 --repeats 3 --staleness 1 2 --policies drop wait --tool-latency 0 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, fmt_stats, print_table, summarize, write_results  # noqa: E402


def _config(root: Path, model_dir: Path, args: argparse.Namespace, max_staleness: int, policy: str, latency: float):
    from ajet.config import load_config
    from ajet.testing.charset_task import write_prompts

    turns = [args.tail_turns if i % args.tail_every == 0 else 1 for i in range(args.tail_every)]
    prompts = write_prompts(root / "prompts.jsonl", n=32, turns=turns, tool_latency_s=latency)
    task = "ajet.testing.charset_task"
    conf = {
        "ajet": {
            "experiment_name": f"async_bench_s{max_staleness}",
            "model": {"path": str(model_dir), "chat_template": "model"},
            "data": {"train_batch_size": args.batch, "max_prompt_length": 256, "max_response_length": 256, "seed": 0},
            "rollout": {
                "user_workflow": f"{task}->CharSetWorkflow",
                "num_repeat": args.group,
                "temperature": 1.0,
                "max_env_worker": 64,
                "max_response_length_in_one_turn": args.max_tokens,
                "max_model_len": 512,
                "multi_turn": {"max_steps": args.tail_turns},
            },
            "task_reader": {"type": "dataset_file", "dataset_file": {"training": {"file_path": str(prompts)}}},
            "task_judge": {"judge_protocol": f"{task}->CharSetJudge"},
            "trainer_common": {
                "total_training_steps": args.steps,
                "save_freq": 0,
                "logger": ["jsonl"],
                "micro_batch_size": 64,
                "optim": {"lr": args.lr, "weight_decay": 0.0, "grad_clip": 1.0},
                "async": {"max_staleness": max_staleness, "stale_policy": policy},
            },
        }
    }
    path = root / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return load_config(path, [])


def run_once(args: argparse.Namespace, max_staleness: int, policy: str, latency: float, repeat: int) -> dict[str, float]:
    from ajet.testing.charset_task import build_char_model
    from ajet.training import TrainingLoop

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = build_char_model(root / "model", seed=repeat)
        cfg = _config(root, model_dir, args, max_staleness, policy, latency)
        loop = TrainingLoop(cfg, root / "run")
        t0 = time.perf_counter()
        asyncio.run(loop.run())
        wall = time.perf_counter() - t0
    history = loop.history
    idle = sum(h["timing/rollout_s"] for h in history)
    return {
        "wall_s": wall,
        "steps_per_hour": len(history) / wall * 3600.0,
        "trainer_idle_s": idle,
        "trainer_idle_share": idle / wall,
        "train_s": sum(h["timing/train_s"] for h in history),
        "final_reward": statistics.fmean(h["rollout/reward_mean"] for h in history[-3:]),
        "first_reward": statistics.fmean(h["rollout/reward_mean"] for h in history[:3]),
        "dropped_groups": history[-1]["async/dropped_groups_total"],
        "max_staleness_seen": max(h["async/staleness_max"] for h in history),
        "turns_mean": statistics.fmean(h["rollout/turns_mean"] for h in history),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--staleness", type=int, nargs="+", default=[2])
    parser.add_argument("--policies", nargs="+", default=["drop", "wait"], choices=["drop", "wait"])
    parser.add_argument("--batch", type=int, default=4, help="tasks per step")
    parser.add_argument("--group", type=int, default=8, help="episodes per task")
    parser.add_argument("--max-tokens", type=int, default=12, help="new tokens per model call")
    parser.add_argument("--tail-every", type=int, default=4, help="one task in N is long")
    parser.add_argument("--tail-turns", type=int, default=6, help="model calls of a long task")
    parser.add_argument("--tool-latency", type=float, nargs="+", default=[0.0, 1.0],
                        help="seconds an episode waits between two model calls (a simulated tool call)")
    parser.add_argument("--lr", type=float, default=6e-3)
    args = parser.parse_args()

    schedules = [(0, "drop")] + [(s, p) for s in args.staleness if s > 0 for p in args.policies]
    results: dict[str, dict[str, dict[str, float]]] = {}
    raw: dict[str, list[dict[str, float]]] = {}
    rows = []
    for latency in args.tool_latency:
        base = None
        for s, policy in schedules:
            name = ("sync" if s == 0 else f"async s={s} {policy}") + f", tool {latency:g}s"
            runs = [run_once(args, s, policy, latency, r) for r in range(args.repeats)]
            raw[name] = runs
            r = results[name] = {k: summarize([run[k] for run in runs]) for k in runs[0]}
            base = base or r["steps_per_hour"]["median"]  # sync comes first at each latency
            rows.append(
                [
                    name,
                    fmt_stats(r["steps_per_hour"], 0),
                    f"{r['steps_per_hour']['median'] / base:.2f}x",
                    fmt_stats(r["trainer_idle_s"], 1),
                    f"{100 * r['trainer_idle_share']['median']:.0f}%",
                    fmt_stats(r["final_reward"], 3),
                    f"{r['dropped_groups']['median']:.0f}",
                    f"{r['max_staleness_seen']['max']:.0f}",
                    f"{r['turns_mean']['median']:.2f}",
                ]
            )
    print_table(
        f"async vs sync, {args.steps} steps, {args.batch}x{args.group} episodes/step, long tail {args.tail_turns} calls in 1/{args.tail_every}",
        ["schedule", "steps/hour", "vs sync", "idle s", "idle %", "final reward", "dropped", "stale max", "turns/ep"],
        rows,
    )
    path = write_results("async_vs_sync", {"env": environment(), "settings": vars(args), "results": results, "runs": raw})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
