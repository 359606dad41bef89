"""Where built-in models and downloaded wheels live, and how a cache entry is built safely.

Layout: ``$AJET_CACHE_DIR/models/<name>`` when ``AJET_CACHE_DIR`` is set, else
``~/.cache/ajet/models/<name>``; wheels fetched from the package index go to ``…/wheels`` and
files read out of them to ``…/sources``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """The ajet cache directory (``$AJET_CACHE_DIR`` or ``~/.cache/ajet``)."""
    env = os.environ.get("AJET_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ajet"


def models_dir() -> Path:
    return cache_root() / "models"


def wheels_dir() -> Path:
    return cache_root() / "wheels"


def sources_dir() -> Path:
    """Files read out of wheels (qwen.tiktoken) and scratch space for conversions."""
    return cache_root() / "sources"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, calling `build(tmp_dir)` first if it does not exist yet.

    Several processes (pytest workers, a launcher and a benchmark) may ask for the same built-in at
    once: a file lock makes only one of them build, and the build goes to a temporary sibling that is
    renamed into place, so `target` existing always means it is complete.
    """
    if target.is_dir():
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            # mkdtemp (and safetensors) make entries owner-only; a cache entry is shared like any model dir
            tmp.chmod(0o755)
            for item in tmp.iterdir():
                if item.is_file():
                    item.chmod(0o644)
            os.rename(tmp, target)
            logger.info("cached %s", target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
