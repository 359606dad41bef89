"""What a person watching a training run sees: a progress bar per step, then a summary at the end.

    progress = StepProgress(total_steps, initial=step)
    progress.step_done(metrics)         # after every step: reward, accuracy, tool-call rate on the bar
    progress.close()
    print(run_report(run_dir))          # first vs last step, the plot, where SwanLab and logview are

The report reads the run's `metrics.jsonl` (the one record of every step, resumed runs included),
so it describes the whole run, not just the part this process trained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ajet.logging.metrics import JSONL_FILENAME, SWANLAB_DIRNAME

logger = logging.getLogger(__name__)

PLOT_FILENAME = "learning_curve.png"
LOGVIEW_DIRNAME = "logview"


@dataclass(frozen=True)
class Shown:
    """A metric in the progress bar and the summary: its key, a short label, how to print it."""

    key: str
    label: str
    percent: bool = False

    def format(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.0f}%" if self.percent else f"{value:.3g}"


# The bar: what tells a person within a few steps whether the agent is learning.
BAR_METRICS = (
    Shown("rollout/reward_mean", "reward"),
    Shown("rollout/success_rate", "acc", percent=True),
    Shown("rollout/tool_call_rate", "tool", percent=True),
)
# The summary table, first vs last step.
SUMMARY_METRICS = (
    Shown("rollout/reward_mean", "reward (mean per episode)"),
    Shown("rollout/success_rate", "accuracy (training episodes)", percent=True),
    Shown("rollout/tool_call_rate", "episodes that called the tool", percent=True),
    Shown("rollout/format_error_rate", "turns with a malformed tool call", percent=True),
    Shown("rollout/truncated_turn_rate", "turns cut by the token limit", percent=True),
    Shown("rollout/response_tokens_mean", "sampled tokens per episode"),
    Shown("rollout/turns_mean", "model calls per episode"),
    Shown("val/accuracy", "held-out accuracy (validation)", percent=True),
    Shown("timing/step_s", "seconds per step"),
)


class StepProgress:
    """A tqdm bar over training steps whose postfix shows the last step's reward, accuracy and tool use."""

    def __init__(self, total: int, initial: int = 0, desc: str = "training") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def step_done(self, metrics: Mapping[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(bar_postfix(metrics), refresh=True)

    def close(self) -> None:
        self.bar.close()


def bar_postfix(metrics: Mapping[str, float]) -> str:
    """`reward=0.375 acc=38% tool=75%` for one step's metrics (absent metrics are left out)."""
    return " ".join(f"{m.label}={m.format(float(metrics[m.key]))}" for m in BAR_METRICS if m.key in metrics)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl` in file order (unreadable lines skipped)."""
    path = Path(run_dir) / JSONL_FILENAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def series(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) for every record holding a number under `key`; a step logged twice keeps its last value."""
    points: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in record:
            points[int(record["step"])] = float(value)
    return sorted(points.items())


def summary_rows(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(label, first, last, change) per summary metric that the run logged.

    "first" and "last" are the first and last steps that logged the metric (validation may run only
    before training and at the end, so its steps differ from the training steps').
    """
    rows = []
    for metric in SUMMARY_METRICS:
        points = series(records, metric.key)
        if not points:
            continue
        (first_step, first), (last_step, last) = points[0], points[-1]
        if metric.percent:
            change = f"{100 * (last - first):+.0f} pts"
        else:
            change = f"{last - first:+.3g}"
        label = f"{metric.label} [step {first_step} -> {last_step}]"
        rows.append((label, metric.format(first), metric.format(last), change if len(points) > 1 else ""))
    return rows


def write_plot(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Reward, accuracy and tool-call rate per step as a PNG; None when matplotlib is not installed
    or nothing was logged."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    lines = [(m, series(records, m.key)) for m in (*BAR_METRICS, Shown("val/accuracy", "held-out acc", True))]
    lines = [(m, pts) for m, pts in lines if pts]
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for metric, points in lines:
        steps, values = zip(*points)
        style = "o--" if metric.key.startswith("val/") else ".-"
        ax.plot(steps, values, style, label=metric.label, linewidth=1.5, markersize=4)
    ax.set_xlabel("training step")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("ajet: reward, accuracy and tool use per step", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_report(run_dir: Path, *, plot: bool = True) -> str:
    """The end-of-run text: the first-vs-last table, then where the plot, SwanLab and logview are."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    table = Table(title=f"run summary ({len(series(records, 'rollout/reward_mean'))} training steps)", title_justify="left")
    table.add_column("metric")
    table.add_column("first", justify="right")
    table.add_column("last", justify="right")
    table.add_column("change", justify="right")
    for row in summary_rows(records):
        table.add_row(*(escape(cell) for cell in row))  # "[step 1 -> 3]" is text, not rich markup

    console = Console(width=100, force_terminal=False, color_system=None)
    with console.capture() as captured:
        console.print(table)
    lines = [captured.get().rstrip()]
    plot_path = None
    if plot:
        try:
            plot_path = write_plot(records, run_dir / PLOT_FILENAME)
        except Exception:  # noqa: BLE001 - a plot must never fail a finished run
            logger.exception("writing the learning-curve plot failed")
    if plot_path:
        lines.append(f"plot:     {plot_path}")
    elif plot:
        lines.append("plot:     none (install matplotlib for learning_curve.png)")
    swanlog = run_dir / SWANLAB_DIRNAME
    if swanlog.is_dir():
        lines.append(f"SwanLab:  {swanlog}  (view: swanlab watch {swanlog}; upload: swanlab sync <run folder inside>)")
    logview = run_dir / LOGVIEW_DIRNAME
    pages = sorted(logview.glob("*.html")) if logview.is_dir() else []
    if pages:
        lines.append(f"logview:  {len(pages)} pages in {logview} (open {pages[-1].name} in a browser)")
    else:
        lines.append("logview:  add --with-logview to write token-level pages per step")
    lines.append(f"metrics:  {run_dir / JSONL_FILENAME}")
    return "\n".join(lines)
