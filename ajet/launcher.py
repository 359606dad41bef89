"""The `ajet` command: read the config, check the user's classes load, make the run dir, start a backbone.

    ajet --conf tutorial/example_math_agent/math_agent.yaml --backbone debug rollout.num_repeat=8
    ajet --conf my.yaml --dry-run          # print the effective config, classes and first task
    ajet --kill "python|ray|vllm"          # end leftover ajet / ray / vllm processes of this user

Config mistakes print one message, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ajet.config import AjetConfig

EXIT_CONFIG_ERROR = 2
RUN_CONFIG_FILE = "config.yaml"

logger = logging.getLogger("ajet.launcher")


def build_parser() -> argparse.ArgumentParser:
    from ajet import __version__

    parser = argparse.ArgumentParser(
        prog="ajet",
        description="Train an LLM agent with reinforcement learning (GRPO).",
        epilog="Trailing key=value arguments override the YAML, e.g. rollout.num_repeat=8 "
        "trainer_common.optim.lr=1e-6 (the `ajet.` prefix is optional).",
    )
    parser.add_argument("--conf", help="the experiment YAML (top key `ajet:`)")
    parser.add_argument("--backbone", choices=["debug", "verl"], help="overrides ajet.backbone")
    parser.add_argument(
        "--with-ray",
        action="store_true",
        help="debug backbone: run workflows in Ray workers (joins RAY_ADDRESS when set, else starts a local Ray)",
    )
    parser.add_argument("--with-logview", action="store_true", help="write token-level logview pages of episodes")
    parser.add_argument(
        "--kill",
        metavar="PATTERN",
        help="end this user's leftover processes of ajet runs (the launcher and everything it "
        'started: Ray, vLLM, workers) whose command line matches one of the |-separated words, '
        'e.g. "python|ray|vllm"',
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the effective config, the workflow and judge classes and the first "
        "training task, then exit without creating a run directory",
    )
    parser.add_argument("--version", action="version", version=f"ajet {__version__}")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()

    if args.kill:
        from ajet.processes import kill_run_processes

        kill_run_processes(args.kill)
        if not args.conf:
            return 0
    if not args.conf:
        build_parser().error("--conf is required (or --kill alone)")

    # User specs such as `tutorial.example_math_agent.math_agent->ExampleMathLearn` are relative to
    # where the command is run, as they are for a script started there.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)

    from ajet.backbone import LaunchOptions, check_config, run
    from ajet.config import ConfigError, load_config, resolve_experiment_dir
    from ajet.training.user_code import resolve_user_classes

    try:
        cfg = load_config(args.conf, args.overrides, backbone=args.backbone)
        workflow_cls, judge_cls = resolve_user_classes(cfg)
        check_config(cfg, cfg.backbone)
        if args.dry_run:
            print_dry_run(cfg, workflow_cls, judge_cls)
            return 0
        run_dir = resolve_experiment_dir(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
    except ConfigError as exc:
        print(f"ajet: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    logger.info("ajet: run directory %s (effective config in %s)", run_dir, RUN_CONFIG_FILE)

    from ajet.processes import mark_this_run

    mark_this_run()  # before Ray, vLLM or any worker starts: they inherit the mark (`ajet --kill`)

    options = LaunchOptions(
        backbone=cfg.backbone, run_dir=run_dir, with_logview=args.with_logview, with_ray=args.with_ray
    )
    try:
        result = run(cfg, options)
    except ConfigError as exc:  # e.g. the task reader, first used by the backbone, finds no file
        print(f"ajet: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return int(result or 0)


def print_dry_run(cfg: AjetConfig, workflow_cls: type, judge_cls: type | None) -> None:
    from ajet.task_reader import build_task_reader

    print("# effective config")
    print(cfg.to_yaml().rstrip())
    print(f"# workflow: {_qualname(workflow_cls)}")
    print(f"# judge: {_qualname(judge_cls) if judge_cls else '(none: workflows must return a reward)'}")
    tasks = build_task_reader(cfg).train_tasks()
    if not tasks:
        print("# first training task: (none: the reader returned no training tasks)")
        return
    first = tasks[0]
    print(f"# training tasks: {len(tasks)}")
    print(f"# first training task: {first.task_id}")
    print(first.main_query)


def _qualname(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    where = getattr(module, "__file__", None) or cls.__module__
    return f"{cls.__module__}.{cls.__qualname__} ({where})"


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Every model call is an HTTP request to the proxy; their per-request INFO lines would bury the
    # training log (they stay available at DEBUG).
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
