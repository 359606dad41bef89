"""Shared fixtures. Heavy ones (models) are session-scoped and cached on disk across runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
# AJET_GSM8K_DIR points a checkout that has no ../shared (e.g. a git worktree) at the dataset.
GSM8K_DIR = Path(os.environ.get("AJET_GSM8K_DIR", SHARED / "datasets" / "gsm8k"))

# The working directory is on sys.path for `tutorial.…` dot imports, as it is for the launcher.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "test.jsonl").exists():
        pytest.skip(f"GSM8K not found at {GSM8K_DIR}")
    return GSM8K_DIR
