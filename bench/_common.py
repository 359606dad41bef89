"""Shared plumbing for bench/ scripts: where they ran, repeat statistics, a table, a JSON record.

    env = environment()                       # device, versions, date, threads
    stats = summarize([3.1, 2.9, 3.0])       # {"min":..., "median":..., "max":..., "n": 3}
    print_table("engine scaling", ["method", "tok/s"], rows)
    path = write_results("engine_scaling", {"env": env, "results": ...})

Results go to bench/results/<name>-<UTC timestamp>.json (git-ignored output, not committed data).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# GSM8K as shipped in the repository (train/test .jsonl.gz).
GSM8K_DIR = Path(__file__).resolve().parents[1] / "data" / "gsm8k"


def open_text(path: str | os.PathLike[str]):
    """A text handle on `path`, decompressed when it ends in .gz (GSM8K ships as .jsonl.gz)."""
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def environment() -> dict[str, Any]:
    """What a reader needs to compare two result files: machine, device, library versions, time."""
    import torch
    import transformers

    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def summarize(values: Iterable[float]) -> dict[str, float]:
    """min / median / max over repeats (no mean: one slow outlier on a shared machine would move it)."""
    vals = list(values)
    if not vals:
        raise ValueError("summarize() needs at least one value")
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "n": len(vals)}


def fmt_stats(stats: dict[str, float], digits: int = 1) -> str:
    """'median (min–max)' for a table cell."""
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}–{stats['max']:.{digits}f})"


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    Console().print(table)


def write_results(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write payload as JSON to <out_dir or bench/results>/<name>-<timestamp>.json and return the path."""
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
