"""Relative paths written in a YAML file mean the YAML file's folder.

A tutorial YAML that says `dataset_path: ../../data/gsm8k` must find the data whichever directory
`ajet --conf <that file>` is started from, so the loader rewrites the YAML's relative *input* paths
to absolute ones before anything else reads them. The rule for one value:

- `./x` and `../x` are paths: they become `<yaml folder>/x`;
- any other relative value becomes `<yaml folder>/x` only if that exists, so hub ids
  (`openai/gsm8k`, `Qwen/Qwen2.5-7B-Instruct`), `builtin:` names and dotted module specs stay as written;
- absolute paths, `~/...` and URLs are left alone.

Output paths (`trainer_common.experiment_dir`, `resume`) keep meaning the working directory (runs
land where you start them), and so do `key=value` overrides on the command line, which are applied
after this rewrite.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Keys (paths inside the `ajet:` block) that hold a file or directory to read.
PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("model", "path"),
    ("task_reader", "huggingface_dat_repo", "dataset_path"),
    ("task_reader", "dataset_file", "training", "file_path"),
    ("task_reader", "dataset_file", "validation", "file_path"),
    # AgentJet's name for the dataset_file block (see TaskReaderConfig).
    ("task_reader", "jsonl_dataset_file", "training", "file_path"),
    ("task_reader", "jsonl_dataset_file", "validation", "file_path"),
)
# Keys holding a `module->Name` spec, whose `path/file.py->Name` form names a file.
SPEC_KEYS: tuple[tuple[str, ...], ...] = (
    ("rollout", "user_workflow"),
    ("rollout", "agentscope_learn_protocol"),  # AgentJet's pre-1.0 name for user_workflow
    ("task_judge", "judge_protocol"),
)
SPEC_SEPARATOR = "->"


def resolve_relative_path(value: str, base: Path) -> str:
    """`value` made absolute against `base` when it is a relative path (see the module docstring)."""
    text = value.strip()
    if not text or text.startswith(("/", "~")) or "://" in text or text.startswith("builtin:"):
        return value
    candidate = base / text
    if text.startswith(("./", "../")) or candidate.exists():
        return os.path.normpath(candidate)
    return value


def _resolve_spec(value: str, base: Path) -> str:
    source, sep, name = value.partition(SPEC_SEPARATOR)
    source = source.strip()
    # Only file specs name a path; `pkg.module->Name` is imported from the working directory.
    if not sep or not (source.endswith(".py") or "/" in source):
        return value
    resolved = resolve_relative_path(source, base)
    if resolved == source and not source.endswith(".py") and resolve_relative_path(source + ".py", base) != source + ".py":
        resolved = os.path.normpath(base / source)  # `dir/agent->Name` written for `dir/agent.py`
    return value if resolved == source else f"{resolved}{SPEC_SEPARATOR}{name.strip()}"


def resolve_yaml_paths(block: dict[str, Any], yaml_dir: Path) -> list[str]:
    """Rewrite the relative input paths of a YAML's `ajet:` block in place; returns the keys changed."""
    base = Path(os.path.abspath(yaml_dir))
    changed: list[str] = []
    for keys, resolve in [*((k, resolve_relative_path) for k in PATH_KEYS), *((k, _resolve_spec) for k in SPEC_KEYS)]:
        parent: Any = block
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or not isinstance(parent.get(keys[-1]), str):
            continue
        new = resolve(parent[keys[-1]], base)
        if new != parent[keys[-1]]:
            parent[keys[-1]] = new
            changed.append(".".join(keys))
    return changed
