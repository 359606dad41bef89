"""Checkpoint directories: atomic writes, finding the latest, keeping the last N, RNG state.

Layout: `<directory>/global_step_<N>/` (the loop uses `<run_dir>/checkpoints`) holding whatever
the trainer writes plus `meta.json` ({"step", "extra_state"}), which is written last. A checkpoint is first assembled in a
hidden `.tmp-*` sibling and renamed into place, and rename is atomic on one filesystem, so a process
killed mid-save leaves only a `.tmp-*` folder that `latest_checkpoint` never returns.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

META_FILENAME = "meta.json"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


def checkpoint_dir(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"global_step_{step}"


@contextmanager
def atomic_checkpoint(directory: str | Path, step: int, extra_state: dict[str, Any]) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success write meta.json and move it to `global_step_<step>`.

    On an exception the temporary folder is removed and nothing else changes.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp-global_step_{step}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        meta = {"step": step, "extra_state": extra_state}
        (tmp / META_FILENAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        _fsync_dir_files(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): swap the old one out first
            trash = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with meta.json) in `directory` as (step, path), oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / META_FILENAME).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all) and stale `.tmp-*` folders.

    Only call this from the process that writes checkpoints, after a save: a `.tmp-*` folder then
    belongs to a crashed earlier save.
    """
    removed = []
    found = list_checkpoints(directory)
    if keep > 0:
        for _, path in found[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    root = Path(directory)
    for child in root.glob(".tmp-*") if root.is_dir() else []:
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILENAME).read_text())


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in a form `torch.load(weights_only=True)` reads."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir_files(folder: Path) -> None:
    # Flush file contents before the rename publishes them; otherwise a power loss could publish a
    # checkpoint whose files are still empty.
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
