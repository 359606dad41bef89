#!/usr/bin/env python
"""Does the tutorial agent learn? A measured learning curve on the real model, with a control.

Trains the Math Agent tutorial as shipped (tutorial/example_math_agent/math_agent.yaml, the real
`builtin:qwen2.5-coder-0.5b-instruct`) for `--steps` GRPO steps, and evaluates the same held-out
GSM8K test questions (the first `--eval-tasks` of the test split) greedily before and after, through
the product's own validation (`trainer_common.val_before_train` / `test_freq`, temperature 0). Then
the same for the control arm: the same number of steps with every advantage flipped
(`TrainingLoop(advantage_sign=-1)`), which must not improve. Each arm runs in its own child process,
so its peak RSS is its own: one after the other, or side by side with `--parallel` (each with half
the cores), which gives both arms the same steps in the same wall time.

    python bench/learning_curve.py --steps 30 --eval-tasks 50
    python bench/learning_curve.py --steps 2 --eval-tasks 4 --arms policy     # a pilot
    python bench/learning_curve.py --steps 10 --parallel                      # both arms at once
    python bench/learning_curve.py --steps 20 --out-dir runs/lc --resume      # continue both to step 20
    python bench/learning_curve.py --steps 30 rollout.temperature=1.0         # overrides go to every arm
    python bench/learning_curve.py --steps 30 --out-dir runs/lc --report-only # the report of an interrupted run
    python bench/learning_curve.py --steps 8 --fit-tasks 0 1 2 3 --parallel   # the fitting check (below)

The fitting check (`--fit-tasks I ...`) trains on the named GSM8K test questions themselves, all of
them in every step, and evaluates the same ones. It separates two reasons a curve can stay flat: an
update that cannot raise the reward even on the questions it trains on (a broken pipeline, a bad
rate), and one that can but has seen too few episodes to generalise.

Cost on a 2-core CPU: a GRPO step of the tutorial's defaults, plus a greedy pass over the held-out
questions three times (before; after each arm); see bench/RESULTS.md, section 7, for the measured
step time, and run it under `nice` on a shared machine. tests/test_learning_curve_bench.py runs it
end to end on a tiny random model (structure only).

Reported per arm: held-out accuracy, tool-call rate, share of tool calls whose code printed nothing,
format-error rate, turns, tokens and truncated turns before/after; reward per step; the share of
groups with zero reward variance (they carry no GRPO signal); seconds per step split into rollout
and update; peak RSS and checkpoint size. Writes JSON (bench/results/learning_curve-*.json) and a
PNG (bench/results/learning_curve.png: reward per step, before/after bars).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from _common import GSM8K_DIR, RESULTS_DIR, environment, open_text, print_table, write_results  # noqa: E402

TUTORIAL_YAML = REPO / "tutorial" / "example_math_agent" / "math_agent.yaml"
ARMS = {"policy": 1.0, "control": -1.0}  # advantage sign


# ------------------------------------------------------------------ one arm (child process)


def fit_overrides(indices: list[int], out_dir: Path) -> list[str]:
    """Write the GSM8K test questions at `indices` to one file and point training and validation at it,
    all of them in every step (train_batch_size = their number)."""
    with open_text(GSM8K_DIR / "test.jsonl.gz") as handle:
        rows = handle.read().splitlines()
    if not indices or any(not 0 <= i < len(rows) for i in indices) or len(set(indices)) != len(indices):
        raise SystemExit(f"--fit-tasks: distinct indices into GSM8K's test split (0..{len(rows) - 1}), got {indices}")
    path = out_dir / "fit_tasks.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(rows[i] + "\n" for i in indices))
    return [
        "task_reader.type=dataset_file",
        f"task_reader.dataset_file.training.file_path={path}",
        f"task_reader.dataset_file.validation.file_path={path}",
        f"data.train_batch_size={len(indices)}",
    ]


def arm_overrides(args: argparse.Namespace, arm: str, run_dir: Path) -> list[str]:
    return [
        *args.overrides,
        f"trainer_common.experiment_dir={run_dir}",
        f"trainer_common.total_training_steps={args.steps}",
        f"trainer_common.test_freq={args.steps}",  # validate once, after the last step
        # The policy arm measures the starting point; the control starts from the same weights. A
        # resumed arm continues from its own last checkpoint (weights, AdamW, task position) and
        # appends to its metrics.jsonl; the starting point is already measured.
        f"trainer_common.val_before_train={'true' if arm == 'policy' and not args.resume else 'false'}",
        f"trainer_common.val_max_num_task_each_validation={args.eval_tasks}",
        "trainer_common.save_freq=0",  # one (adapter) checkpoint at the end
        "trainer_common.logger=[jsonl]",
        f"trainer_common.resume={'auto' if args.resume else 'never'}",
    ]


def run_arm(args: argparse.Namespace) -> None:
    from ajet.config import load_config
    from ajet.training import TrainingLoop

    run_dir = Path(args.run_dir)
    cfg = load_config(args.conf, arm_overrides(args, args.child, run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    loop = TrainingLoop(cfg, run_dir, advantage_sign=ARMS[args.child])
    asyncio.run(loop.run())


# ------------------------------------------------------------------ reading an arm's run directory


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _validations(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Every held-out evaluation of an arm (validation/step_NNNNN.json), by step."""
    return {int(path.stem.split("_")[1]): json.loads(path.read_text())
            for path in sorted((run_dir / "validation").glob("step_*.json"))}


def eval_summary(report: dict[str, Any] | None) -> dict[str, float] | None:
    """The held-out numbers the issue asks for, from a validation report (eval.json format)."""
    if report is None:
        return None
    m, episodes = report["metrics"], report["episodes"]
    calls = sum(e["tool_calls"] for e in episodes)
    silent = sum(e.get("workflow_metrics", {}).get("tool_calls_without_output", 0) for e in episodes)
    return {
        "accuracy": m["val/accuracy"],
        "tool_call_rate": m["val/tool_call_rate"],
        "tool_calls_per_episode": m["val/tool_calls_per_episode"],
        "silent_tool_call_share": (silent / calls) if calls else 0.0,
        "format_error_rate": m["val/format_error_rate"],
        "turns_mean": m["val/turns_mean"],
        "response_tokens_mean": m["val/response_tokens_mean"],
        "tokens_per_episode": m["val/tokens_per_episode"],
        "truncated_turn_rate": m.get("val/truncated_turn_rate", 0.0),
        "episodes": m["val/episodes"],
    }


def zero_variance_share(run_dir: Path) -> list[float]:
    """Per step: the share of groups (episodes of one task) whose rewards are all equal."""
    shares = []
    for path in sorted((run_dir / "rollouts").glob("step_*.jsonl")):
        groups: dict[str, list[float]] = defaultdict(list)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if not record.get("dropped_as_stale"):
                groups[record["task_id"]].append(float(record["reward"]))
        shares.append(sum(1 for r in groups.values() if max(r) == min(r)) / len(groups) if groups else 0.0)
    return shares


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6 if path.exists() else 0.0


def arm_report(run_dir: Path, steps: int) -> dict[str, Any]:
    records = [r for r in _records(run_dir) if "rollout/reward_mean" in r]

    def per_step(key: str) -> list[float]:
        return [float(r.get(key, 0.0)) for r in records]

    checkpoints = sorted((run_dir / "checkpoints").glob("global_step_*")) if (run_dir / "checkpoints").exists() else []
    rollout_s, train_s = per_step("timing/rollout_s"), per_step("timing/train_s")
    evaluations = {step: eval_summary(report) for step, report in _validations(run_dir).items()}
    return {
        "steps_done": len(records),
        "reward_per_step": per_step("rollout/reward_mean"),
        "train_accuracy_per_step": per_step("rollout/success_rate"),
        "train_tool_call_rate_per_step": per_step("rollout/tool_call_rate"),
        "truncated_turn_rate_per_step": per_step("rollout/truncated_turn_rate"),
        "zero_variance_group_share_per_step": zero_variance_share(run_dir),
        "rollout_s_per_step": rollout_s,
        "update_s_per_step": train_s,
        "step_s_median": statistics.median(per_step("timing/step_s")) if records else None,
        "rollout_s_median": statistics.median(rollout_s) if records else None,
        "update_s_median": statistics.median(train_s) if records else None,
        "before": evaluations.get(0),
        "after": evaluations.get(steps),
        "evaluations": evaluations,  # a resumed run keeps the ones on the way
        "checkpoint_mb": _dir_mb(checkpoints[-1]) if checkpoints else None,
    }


# ------------------------------------------------------------------ the plot


def write_plot(report: dict[str, Any], path: Path, questions: str = "held-out") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report["arms"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    for name, arm in arms.items():
        rewards = arm["reward_per_step"]
        steps = list(range(1, len(rewards) + 1))
        left.plot(steps, rewards, ".-", alpha=0.35, label=f"{name}: reward per step")
        window = 5
        if len(rewards) >= window:
            smooth = [statistics.fmean(rewards[max(0, i - window + 1) : i + 1]) for i in range(len(rewards))]
            left.plot(steps, smooth, "-", linewidth=2, label=f"{name}: {window}-step mean")
    left.set_xlabel("training step")
    left.set_ylabel("mean episode reward (training rollouts)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    before = report["before"]
    bars = [("before", before)] + [(f"after ({name})", arm["after"]) for name, arm in arms.items()]
    bars = [(label, s) for label, s in bars if s is not None]
    width = 0.8 / max(1, len(bars))
    for i, (label, s) in enumerate(bars):
        values = [s["accuracy"], s["tool_call_rate"]]
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(2)]
        right.bar(xs, values, width=width, label=label)
        for x, v in zip(xs, values):
            right.text(x, v + 0.01, f"{100 * v:.0f}%", ha="center", fontsize=7)
    right.set_xticks([0, 1], [f"{questions} accuracy", "tool-call rate"])
    right.set_ylim(0, 1.05)
    right.set_title(f"{int(before['episodes']) if before else '?'} {questions} GSM8K test questions, greedy", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the parent


def start_child(args: argparse.Namespace, arm: str, run_dir: Path, threads: int | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", arm, "--run-dir", str(run_dir), "--conf", str(args.conf),
           "--steps", str(args.steps), "--eval-tasks", str(args.eval_tasks), *(["--resume"] if args.resume else []),
           *args.overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the child
    print(f"[{arm}] {'OMP_NUM_THREADS=' + str(threads) + ' ' if threads else ''}{' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    return {"proc": proc, "start": time.time(), "load_average_start": os.getloadavg(), "threads": threads}


def wait_child(child: dict[str, Any]) -> dict[str, Any]:
    # wait4, not Popen.wait: its rusage is this child's own peak RSS, even with the other arm running.
    _, status, usage = os.wait4(child["proc"].pid, 0)
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "started_at": child["start"],
        "wall_s": time.time() - child["start"],
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "torch_threads": child["threads"],
        "load_average_start": child["load_average_start"],
        "load_average_end": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps per arm")
    parser.add_argument("--eval-tasks", type=int, default=50, help="held-out GSM8K test questions (the first N)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--conf", type=Path, default=TUTORIAL_YAML)
    parser.add_argument("--out-dir", type=Path, default=None, help="run directories (default runs/learning_curve-<time>)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON and the PNG go")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the table, JSON and PNG from the run directories in --out-dir "
                             "(an interrupted arm reports the steps it finished; its missing evaluation shows as -)")
    parser.add_argument("--parallel", action="store_true",
                        help="run the arms at the same time, each with an equal share of the cores (OMP_NUM_THREADS), "
                             "instead of one after the other with all of them")
    parser.add_argument("--resume", action="store_true",
                        help="continue the arms in --out-dir from their last checkpoints up to --steps "
                             "(evaluating again at --steps) instead of starting them afresh")
    parser.add_argument("--fit-tasks", type=int, nargs="+", metavar="I", default=None,
                        help="the fitting check: train on these GSM8K test questions (0-based), all of them in "
                             "every step, and evaluate the same ones (replaces --eval-tasks)")
    parser.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides for every arm")
    args = parser.parse_args(argv)
    if args.child:
        run_arm(args)
        return 0

    if (args.report_only or args.resume) and args.out_dir is None:
        parser.error("--report-only and --resume need --out-dir (the run directories to read)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out_dir or REPO / "runs" / f"learning_curve-{stamp}"
    questions = "held-out"
    if args.fit_tasks:
        args.overrides = [*args.overrides, *fit_overrides(args.fit_tasks, out_dir)]
        args.eval_tasks, questions = len(args.fit_tasks), "trained-on"
    report: dict[str, Any] = {"env": environment(), "settings": {
        "steps": args.steps, "eval_tasks": args.eval_tasks, "conf": str(args.conf.relative_to(REPO) if args.conf.is_relative_to(REPO) else args.conf),
        "overrides": args.overrides, "report_only": args.report_only, "parallel": args.parallel, "resume": args.resume, "fit_tasks": args.fit_tasks, "command": " ".join(["python", "bench/learning_curve.py", *(argv or sys.argv[1:])]),
    }, "arms": {}, "processes": {}}
    if not args.report_only:
        # Side by side, each arm gets an equal share of the cores, so both finish their steps in the
        # same wall time; one after the other, each gets all of them (torch's own default).
        threads = max(1, (os.cpu_count() or 1) // len(args.arms)) if args.parallel else None
        if args.parallel:
            children = {arm: start_child(args, arm, out_dir / arm, threads) for arm in args.arms}
            report["processes"] = {arm: wait_child(child) for arm, child in children.items()}
        else:
            for arm in args.arms:
                report["processes"][arm] = wait_child(start_child(args, arm, out_dir / arm, threads))
        for arm, process in report["processes"].items():
            if process["returncode"] != 0:
                print(f"[{arm}] exited with {process['returncode']} (its output is above)")
    for arm in args.arms:
        if (out_dir / arm).is_dir():
            report["arms"][arm] = arm_report(out_dir / arm, args.steps)
    report["before"] = next((a["before"] for a in report["arms"].values() if a["before"]), None)

    rows = []
    for key, label in [("accuracy", f"{questions} accuracy"), ("tool_call_rate", "tool-call rate"),
                       ("silent_tool_call_share", "tool calls printing nothing"), ("format_error_rate", "format-error rate"),
                       ("turns_mean", "turns / episode"), ("response_tokens_mean", "sampled tokens / episode"),
                       ("truncated_turn_rate", "turns cut by the token cap")]:
        row = [label, _fmt(report["before"], key)]
        row += [_fmt(arm["after"], key) for arm in report["arms"].values()]
        rows.append(row)
    for key, label in [("step_s_median", "s / step (median)"), ("rollout_s_median", "  rollout s"), ("update_s_median", "  update s")]:
        rows.append([label, ""] + [f"{arm[key]:.0f}" if arm[key] is not None else "-" for arm in report["arms"].values()])
    rows.append(["zero-variance groups", ""] + [
        f"{100 * statistics.fmean(arm['zero_variance_group_share_per_step']):.0f}%" if arm["zero_variance_group_share_per_step"] else "-"
        for arm in report["arms"].values()])
    rows.append(["steps done", ""] + [str(arm["steps_done"]) for arm in report["arms"].values()])
    rows.append(["peak RSS (GB)", ""] + [
        f"{report['processes'][name]['peak_rss_mb'] / 1024:.2f}" if name in report["processes"] else "-"
        for name in report["arms"]])
    rows.append(["checkpoint (MB)", ""] + [f"{arm['checkpoint_mb']:.1f}" if arm["checkpoint_mb"] else "-" for arm in report["arms"].values()])
    print_table(f"learning curve: {args.steps} steps, {args.eval_tasks} {questions} questions",
                ["", "before", *[f"after ({a})" for a in report["arms"]]], rows)
    path = write_results("learning_curve", report, args.results_dir)
    plot = write_plot(report, args.results_dir / ("learning_curve-fit.png" if args.fit_tasks else "learning_curve.png"), questions)
    print(f"wrote {path} and {plot}; run directories under {out_dir}")
    return 1 if any(p["returncode"] != 0 for p in report["processes"].values()) else 0


def _fmt(summary: dict[str, float] | None, key: str) -> str:
    if summary is None:
        return "-"
    value = summary[key]
    return f"{100 * value:.0f}%" if key.endswith(("rate", "share", "accuracy")) else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
