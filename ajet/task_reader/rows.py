"""Turning dataset rows into Tasks: which columns hold the query, answer and id, and what a
missing column means."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ajet.config.schema import TaskReaderConfig
from ajet.schema import Task
from ajet.task_reader.errors import TaskReaderError

logger = logging.getLogger("ajet.task_reader")

GSM8K_ANSWER_MARK = "####"


@dataclass(frozen=True)
class FieldMap:
    """Column names from `ajet.task_reader`; `answer_field`/`id_field` None means "not used"."""

    query_field: str
    answer_field: str | None
    id_field: str | None
    on_missing_field: str  # error | skip

    @classmethod
    def from_config(cls, reader_cfg: TaskReaderConfig) -> FieldMap:
        return cls(
            query_field=reader_cfg.query_field,
            answer_field=reader_cfg.answer_field,
            id_field=reader_cfg.id_field,
            on_missing_field=reader_cfg.on_missing_field,
        )


def rows_to_tasks(rows: Iterable[Mapping[str, Any]], *, split: str, source: str, fields: FieldMap) -> list[Task]:
    """One Task per row, in row order.

    source: what the rows came from (a file path, a hub id), named in errors.
    A row missing a mapped column (absent or null) raises TaskReaderError naming the source, the row
    index and the column; with `on_missing_field: skip` it is skipped, and one warning per source
    gives the count.
    """
    tasks: list[Task] = []
    skipped: dict[str, list[int]] = {}
    total = 0
    for index, row in enumerate(rows):
        total += 1
        missing = _missing_column(row, fields)
        if missing is not None:
            if fields.on_missing_field == "skip":
                skipped.setdefault(missing, []).append(index)
                continue
            raise TaskReaderError(
                f"{source} (split {split!r}), row {index}: column {missing!r} is missing or null "
                f"(columns: {', '.join(map(str, row.keys()))}); map the right column with "
                f"ajet.task_reader.query_field / answer_field / id_field, or set "
                f"ajet.task_reader.on_missing_field: skip",
                key="ajet.task_reader",
                value=missing,
            )
        tasks.append(row_to_task(row, index=index, split=split, fields=fields))
    if skipped:
        details = "; ".join(
            f"{len(rows_)} missing {column!r} (first at row {rows_[0]})" for column, rows_ in skipped.items()
        )
        logger.warning(
            "task_reader: skipped %d of %d rows of %s (split %r): %s",
            sum(map(len, skipped.values())),
            total,
            source,
            split,
            details,
        )
    return tasks


def row_to_task(row: Mapping[str, Any], *, index: int, split: str, fields: FieldMap) -> Task:
    metadata = dict(row)
    if fields.answer_field is not None and "reference_answer" not in metadata:
        metadata["reference_answer"] = solution_final_answer(row[fields.answer_field])
    messages = row.get("messages")
    query = row.get(fields.query_field)
    if query is None:  # only possible when the row carries `messages` (see _missing_column)
        query = next((m.get("content", "") for m in messages or [] if m.get("role") == "user"), "")
    task_id = str(row[fields.id_field]) if fields.id_field is not None else f"{split}-{index}"
    return Task(
        main_query=str(query),
        init_messages=[dict(m) for m in messages] if messages else [{"role": "user", "content": str(query)}],
        task_id=task_id,
        metadata=metadata,
    )


def solution_final_answer(solution: Any) -> str:
    """The bare final answer of a solution: for GSM8K style, the line after the last `####`, commas removed.

    >>> solution_final_answer("She makes 9 * 2 = $18.\\n#### 1,018")
    '1018'

    A solution without the mark is its own answer, stripped. The one parser of solution texts: the
    readers use it to fill `metadata["reference_answer"]`, the math judge for tasks that lack it.
    """
    text = str(solution)
    if GSM8K_ANSWER_MARK not in text:
        return text.strip()
    lines = text.rsplit(GSM8K_ANSWER_MARK, 1)[1].strip().splitlines()
    return lines[0].strip().replace(",", "") if lines else ""


def _missing_column(row: Mapping[str, Any], fields: FieldMap) -> str | None:
    has_messages = isinstance(row.get("messages"), list) and bool(row.get("messages"))
    if row.get(fields.query_field) is None and not has_messages:
        return fields.query_field
    for column in (fields.answer_field, fields.id_field):
        if column is not None and row.get(column) is None:
            return column
    return None
