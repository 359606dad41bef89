"""Per-step metrics to several sinks: a JSONL file, the console, SwanLab.

A sink that fails (SwanLab cannot start, a disk is full) logs one warning and is switched off;
metrics logging never stops training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ajet.config import AjetConfig

logger = logging.getLogger(__name__)

JSONL_FILENAME = "metrics.jsonl"
SWANLAB_DIRNAME = "swanlog"


class Backend(Protocol):
    name: str

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


def _scalar(value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers; NaN/inf to None (JSON has no NaN)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # not a one-element tensor/array
            return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    return value


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = _scalar(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) or isinstance(value, bool):
            out[key] = float(value)
    return out


class JsonlBackend:
    """`run_dir/metrics.jsonl`: one JSON object per step, flushed at once. Appends, so a resumed run continues the file."""

    name = "jsonl"

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / JSONL_FILENAME
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run's lifetime

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        record: dict[str, Any] = {"step": step, "time": time.time()}
        for key, value in metrics.items():
            value = _scalar(value)
            record[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ConsoleBackend:
    """A compact rich table per step: every numeric metric, sorted by name, 4 significant digits."""

    name = "console"
    columns = 3

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        from rich import box
        from rich.table import Table

        items = sorted(_numbers(metrics).items())
        table = Table(title=f"step {step}", box=box.SIMPLE, show_header=False, title_justify="left", padding=(0, 1))
        for _ in range(self.columns):
            table.add_column(style="cyan", no_wrap=True)
            table.add_column(justify="right", no_wrap=True)
        for row_start in range(0, len(items), self.columns):
            cells: list[str] = []
            for key, value in items[row_start : row_start + self.columns]:
                cells += [key, f"{value:.4g}"]
            table.add_row(*cells)
        self.console.print(table)

    def close(self) -> None:
        pass


class SwanlabBackend:
    """SwanLab, stored under `run_dir/swanlog`.

    mode "auto": `online` (cloud) when credentials exist (SWANLAB_API_KEY, or `swanlab login` saved
    them), else `offline` (kept locally; `swanlab sync <dir>` uploads later). An explicit mode
    (online | offline | local | disabled) is passed through.
    """

    name = "swanlab"

    def __init__(self, run_dir: Path, project: str, experiment: str, config: Mapping[str, Any] | None, mode: str = "auto") -> None:
        import swanlab

        self._swanlab = swanlab
        self.mode = resolve_swanlab_mode(mode)
        self.log_dir = run_dir / SWANLAB_DIRNAME
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run = swanlab.init(
            project=project,
            name=experiment,
            config=dict(config or {}),
            mode=self.mode,
            log_dir=str(self.log_dir),
            reinit=True,
        )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        numbers = _numbers(metrics)
        if numbers:
            self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


def resolve_swanlab_mode(configured: str = "auto") -> str:
    """`trainer_common.swanlab_mode` as SwanLab takes it: `auto` is online with credentials, else offline."""
    return _swanlab_mode() if configured == "auto" else configured


def _swanlab_mode() -> str:
    if os.environ.get("SWANLAB_API_KEY"):
        return "online"
    try:
        from swanlab import Settings

        return "online" if Settings().api_key else "offline"
    except Exception:  # noqa: BLE001 - credential lookup is best effort; offline is always safe
        return "offline"


class MetricsLogger:
    """Log a metrics dict per step to every configured backend.

    Args:
        run_dir: the experiment directory (metrics.jsonl and swanlog/ go here).
        backends: names from `trainer_common.logger`: `jsonl`, `console`, `swanlab`.
        project / experiment: SwanLab project and run names.
        config_dict: the effective config, stored with the SwanLab run.
        swanlab_mode: `auto` | online | offline | local | disabled (see SwanlabBackend).

    A run builds it with `MetricsLogger.from_config(run_dir, cfg)`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        backends: Sequence[str],
        project: str = "ajet_project",
        experiment: str = "experiment",
        config_dict: Mapping[str, Any] | None = None,
        *,
        swanlab_mode: str = "auto",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.backends: list[Backend] = []
        for name in backends:
            try:
                if name == "jsonl":
                    self.backends.append(JsonlBackend(self.run_dir))
                elif name == "console":
                    self.backends.append(ConsoleBackend())
                elif name == "swanlab":
                    self.backends.append(SwanlabBackend(self.run_dir, project, experiment, config_dict, swanlab_mode))
                else:
                    logger.warning("unknown metrics logger %r ignored (known: jsonl, console, swanlab)", name)
            except Exception as exc:  # noqa: BLE001 - a sink that cannot start must not stop training
                logger.warning("metrics logger %r failed to start and is disabled: %s", name, exc)

    @classmethod
    def from_config(cls, run_dir: str | Path, cfg: AjetConfig) -> MetricsLogger:
        """The loggers `trainer_common.logger` names, SwanLab in `trainer_common.swanlab_mode`."""
        tc = cfg.trainer_common
        return cls(
            run_dir, list(tc.logger), cfg.project_name, cfg.experiment_name, cfg.to_dict(), swanlab_mode=tc.swanlab_mode
        )

    @property
    def active(self) -> list[str]:
        return [backend.name for backend in self.backends]

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for backend in list(self.backends):
            try:
                backend.log(metrics, step)
            except Exception as exc:  # noqa: BLE001
                logger.warning("metrics logger %r failed at step %d and is disabled: %s", backend.name, step, exc)
                self._drop(backend)

    def close(self) -> None:
        for backend in list(self.backends):
            self._drop(backend)

    def _drop(self, backend: Backend) -> None:
        self.backends.remove(backend)
        try:
            backend.close()
        except Exception as exc:  # noqa: BLE001
            logger.warning("metrics logger %r failed to close: %s", backend.name, exc)

    def __enter__(self) -> MetricsLogger:  # noqa: PYI034 - not meant to be subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
