"""Importing a bench/ script as a module in tests (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench_module(filename: str) -> Iterator[ModuleType]:
    """Yield bench/<filename> imported as a module, then forget it; for a module-scoped fixture.

    The module is registered in sys.modules while in use: dataclasses resolve string annotations there.
    """
    name = "bench_" + Path(filename).stem
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)
