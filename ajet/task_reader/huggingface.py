"""`task_reader.type: huggingface_dat_repo`: a dataset by hub id, or a local copy of one.

`dataset_path` may be
- a local directory of `<split>.jsonl|.json|.parquet|.csv` files (what scripts/download_dataset.py
  writes), also `<split>-00000-of-00001.parquet` shards as in a hub snapshot, looked up in
  `<dir>/<dataset_name>/`, `<dir>/`, and their `data/` folders;
- a directory written by `Dataset(Dict).save_to_disk`;
- a single data file (every split reads it);
- a hub id such as `openai/gsm8k`, loaded with `datasets.load_dataset(id, dataset_name, split=...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ajet.schema import Task
from ajet.task_reader.base import TaskReader
from ajet.task_reader.dataset_file import BUILDERS, load_rows
from ajet.task_reader.errors import TaskReaderError
from ajet.task_reader.rows import rows_to_tasks

KEY = "ajet.task_reader.huggingface_dat_repo"


class HuggingFaceRepoReader(TaskReader):
    def _read_train(self) -> list[Task]:
        return self._read(self.cfg.task_reader.huggingface_dat_repo.training_split)

    def _read_val(self) -> list[Task]:
        split = self.cfg.task_reader.huggingface_dat_repo.validation_split
        return self._read(split) if split else []

    def _read(self, split: str) -> list[Task]:
        repo = self.cfg.task_reader.huggingface_dat_repo
        assert repo.dataset_path is not None  # the config requires it for this reader
        rows, source = load_split(repo.dataset_path, repo.dataset_name, split)
        if len(rows) == 0:
            raise TaskReaderError(f"{KEY}: split {split!r} of {source} has no rows", key=f"{KEY}.dataset_path")
        return rows_to_tasks(rows, split=split, source=source, fields=self.fields)


def load_split(dataset_path: str, dataset_name: str | None, split: str) -> tuple[Any, str]:
    """(rows, description of where they came from) for one split."""
    local = Path(dataset_path).expanduser()
    if local.is_dir():
        return _load_local_dir(local, dataset_name, split)
    if local.is_file():
        return load_rows(local, f"{KEY}.dataset_path"), str(local)
    if dataset_path.startswith(("/", "./", "../", "~")):
        raise TaskReaderError(
            f"{KEY}.dataset_path = {dataset_path!r}: no such file or directory",
            key=f"{KEY}.dataset_path",
            value=dataset_path,
        )
    return _load_hub(dataset_path, dataset_name, split), f"hub dataset {dataset_path!r}"


def _load_local_dir(root: Path, dataset_name: str | None, split: str) -> tuple[Any, str]:
    import datasets

    if (root / "dataset_dict.json").is_file():
        saved = datasets.load_from_disk(str(root))
        if split not in saved:
            raise _unknown_split(split, root, list(saved))
        return saved[split], str(root)

    for folder in _candidate_folders(root, dataset_name):
        files = _split_files(folder)
        if not files:
            continue
        if split not in files:
            raise _unknown_split(split, folder, sorted(files))
        chosen = files[split]
        builder = BUILDERS[chosen[0].suffix.lower()]
        if len(chosen) == 1:
            return load_rows(chosen[0], f"{KEY}.dataset_path"), str(chosen[0])
        rows = datasets.load_dataset(builder, data_files=[str(p) for p in chosen], split="train")
        return rows, f"{folder}/{split}-*"

    # No plain split files: maybe a hub snapshot with a loading script or README config.
    try:
        return datasets.load_dataset(str(root), dataset_name, split=split), str(root)
    except Exception as exc:  # noqa: BLE001 - reported with the directory and what we looked for
        raise TaskReaderError(
            f"{KEY}.dataset_path = {str(root)!r}: found no <split>.jsonl/.json/.parquet/.csv files there "
            f"(nor under {dataset_name or '<dataset_name>'}/ or data/), and datasets.load_dataset could not "
            f"read it: {type(exc).__name__}: {_first_line(exc)}",
            key=f"{KEY}.dataset_path",
            value=str(root),
        ) from exc


def _candidate_folders(root: Path, dataset_name: str | None) -> list[Path]:
    bases = [root / dataset_name, root] if dataset_name else [root]
    return [folder for base in bases for folder in (base, base / "data") if folder.is_dir()]


def _split_files(folder: Path) -> dict[str, list[Path]]:
    """split name -> its files: `train.jsonl`, or shards `train-00000-of-00002.parquet`."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in BUILDERS:
            continue
        split = path.stem.split("-", 1)[0]
        found.setdefault(split, []).append(path)
    return found


def _load_hub(hub_id: str, dataset_name: str | None, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(hub_id, dataset_name, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise TaskReaderError(
                f"{KEY}: hub dataset {hub_id!r} has no split {split!r} ({_first_line(exc)}); set "
                f"{KEY}.training_split / validation_split",
                key=f"{KEY}.training_split",
                value=split,
            ) from exc
        raise _hub_failure(hub_id, dataset_name, exc) from exc
    except Exception as exc:  # noqa: BLE001 - offline, missing repo, wrong config name...
        raise _hub_failure(hub_id, dataset_name, exc) from exc


def _hub_failure(hub_id: str, dataset_name: str | None, exc: Exception) -> TaskReaderError:
    return TaskReaderError(
        f"{KEY}: cannot load hub dataset {hub_id!r} (config {dataset_name!r}): {type(exc).__name__}: "
        f"{_first_line(exc)}. If this machine is offline, download it elsewhere with "
        f"`python scripts/download_dataset.py --target={hub_id} --path=DIR` and set "
        f"{KEY}.dataset_path to DIR (or use task_reader.type: dataset_file)",
        key=f"{KEY}.dataset_path",
        value=hub_id,
    )


def _unknown_split(split: str, where: Path, available: list[str]) -> TaskReaderError:
    return TaskReaderError(
        f"{KEY}: split {split!r} not found in {where} (available: {', '.join(available) or 'none'}); set "
        f"{KEY}.training_split / validation_split",
        key=f"{KEY}.training_split",
        value=split,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
