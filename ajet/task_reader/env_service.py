"""`task_reader.type: env_service`: the tasks an environment service lists (protocol in ajet.env_service)."""

from __future__ import annotations

from ajet.env_service import METADATA_KEY, EnvServiceClient, EnvServiceError
from ajet.schema import Task
from ajet.task_reader.base import TaskReader
from ajet.task_reader.errors import TaskReaderError


class EnvServiceReader(TaskReader):
    """Tasks from `GET /tasks?split=...` of `task_reader.env_service.env_url`."""

    def _read_train(self) -> list[Task]:
        return self._read(self.cfg.task_reader.env_service.training_split)

    def _read_val(self) -> list[Task]:
        split = self.cfg.task_reader.env_service.validation_split
        return self._read(split) if split else []

    def _read(self, split: str) -> list[Task]:
        env = self.cfg.task_reader.env_service
        assert env.env_url is not None  # the config requires it for this reader
        client = EnvServiceClient(env.env_url, env_type=env.env_type, timeout=env.timeout)
        key = "ajet.task_reader.env_service.env_url"
        try:
            listed = client.list_tasks(split)
        except EnvServiceError as exc:
            raise TaskReaderError(f"{key} = {env.env_url!r}: {exc}", key=key, value=env.env_url) from exc
        where = {"env_url": client.base_url, "env_type": env.env_type, "timeout": env.timeout}
        tasks = []
        for index, item in enumerate(listed):
            if not isinstance(item, dict) or item.get("task_id") is None:
                raise TaskReaderError(
                    f"{key} = {env.env_url!r}: GET /tasks?split={split} item {index} has no task_id: {item!r}",
                    key=key,
                    value=env.env_url,
                )
            query = str(item.get("query") or "")
            metadata = {**dict(item.get("metadata") or {}), METADATA_KEY: where}
            tasks.append(Task(main_query=query, task_id=str(item["task_id"]), metadata=metadata))
        return tasks
