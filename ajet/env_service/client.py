"""The environment-service protocol and its client: tasks and their environments served over HTTP.

The protocol (JSON bodies; every error is a non-2xx status with `{"detail": "..."}`):

    GET    /tasks?split=<split>[&env_type=<type>]
           -> 200 [{"task_id": str, "query": str, "metadata": {...}}, ...]
    POST   /instances                    {"task_id": str[, "env_type": str]}
           -> 200 {"instance_id": str, "observation": any}
    POST   /instances/{instance_id}/step {"action": any}
           -> 200 {"observation": any, "reward": float, "done": bool[, "info": {...}]}
    POST   /instances/{instance_id}/evaluate   {}
           -> 200 {"reward": float, "is_success": bool}
    DELETE /instances/{instance_id}
           -> 200 (any 2xx); 404 when the instance is unknown

One instance is one episode: its own state, created from a task, stepped by the agent, scored at
the end, then deleted. `tests/env_service_reference.py` is a complete service in ~100 lines.

How the pieces meet in a run:
- `ajet.task_reader.env_service.EnvServiceReader` (`task_reader.type: env_service`) turns `GET /tasks`
  into Tasks; each Task's metadata carries the service address under `env_service`, so the task alone
  says where its environment lives.
- The rollout gives each episode `workflow_task.env = EnvServiceClient.for_task(task)` (see
  `bind_env`); the workflow calls `await env.reset()` / `await env.step(action)`.
- `ajet.judge.env_service.EnvServiceJudge` scores the episode with `await env.evaluate()`; whoever
  bound the client calls `await env.close()` after judging to delete the instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from typing_extensions import Self

from ajet.schema import Task, WorkflowTask

METADATA_KEY = "env_service"


class EnvServiceError(RuntimeError):
    """The environment service answered with an error, or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class StepResult:
    observation: Any
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    reward: float
    is_success: bool


class EnvServiceClient:
    """A handle on one environment instance of an env service (the instance is made by `reset()`).

    Holds only the address and the instance id, never an open connection: each call opens its own
    short-lived httpx client, so the handle pickles to Ray workers and works from whichever thread
    and event loop runs the episode (the rollout runs episodes on worker threads).
    """

    def __init__(
        self, base_url: str, task_id: str | None = None, *, env_type: str | None = None, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.task_id = task_id
        self.env_type = env_type
        self.timeout = timeout
        self.instance_id: str | None = None

    @classmethod
    def for_task(cls, task: Task) -> EnvServiceClient | None:
        """A client for `task` when it came from an env service (its metadata says where), else None."""
        where = task.metadata.get(METADATA_KEY)
        if not isinstance(where, dict) or not where.get("env_url"):
            return None
        return cls(
            where["env_url"], task.task_id, env_type=where.get("env_type"), timeout=float(where.get("timeout", 30.0))
        )

    # -- task listing (sync: the reader runs before any event loop) ------------------------------

    def list_tasks(self, split: str) -> list[dict[str, Any]]:
        params = {"split": split}
        if self.env_type:
            params["env_type"] = self.env_type
        try:
            response = httpx.get(f"{self.base_url}/tasks", params=params, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise EnvServiceError(f"GET {self.base_url}/tasks failed: {type(exc).__name__}: {exc}") from exc
        tasks = _json_or_raise(response)
        if not isinstance(tasks, list):
            raise EnvServiceError(f"GET {self.base_url}/tasks returned {type(tasks).__name__}, expected a list")
        return tasks

    # -- one episode (async: workflows and judges are coroutines) --------------------------------

    async def reset(self) -> Any:
        """Create this episode's instance; returns its first observation."""
        if self.task_id is None:
            raise EnvServiceError("EnvServiceClient.reset() needs a task_id")
        if self.instance_id is not None:
            await self.close()
        body: dict[str, Any] = {"task_id": self.task_id}
        if self.env_type:
            body["env_type"] = self.env_type
        reply = await self._request("POST", "/instances", body)
        self.instance_id = str(reply["instance_id"])
        return reply.get("observation")

    async def step(self, action: Any) -> StepResult:
        reply = await self._request("POST", f"/instances/{self._require_instance()}/step", {"action": action})
        return StepResult(
            reply.get("observation"),
            float(reply.get("reward", 0.0)),
            bool(reply.get("done", False)),
            dict(reply.get("info") or {}),
        )

    async def evaluate(self) -> Evaluation:
        reply = await self._request("POST", f"/instances/{self._require_instance()}/evaluate", {})
        return Evaluation(float(reply["reward"]), bool(reply["is_success"]))

    async def close(self) -> None:
        """Delete the instance (no-op when none was made). An already-gone instance is not an error."""
        if self.instance_id is None:
            return
        instance_id, self.instance_id = self.instance_id, None
        try:
            await self._request("DELETE", f"/instances/{instance_id}", None)
        except EnvServiceError as exc:
            if exc.status_code != 404:
                raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _require_instance(self) -> str:
        if self.instance_id is None:
            raise EnvServiceError(f"no environment instance for task {self.task_id!r}: call `await env.reset()` first")
        return self.instance_id

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = f"{self.base_url}{path}"
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise EnvServiceError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        return _json_or_raise(response)


def _json_or_raise(response: httpx.Response) -> Any:
    request = response.request
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise EnvServiceError(
            f"{request.method} {request.url} -> {response.status_code}: {detail}", status_code=response.status_code
        )
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise EnvServiceError(f"{request.method} {request.url} returned non-JSON: {response.text[:200]!r}") from exc


def bind_env(workflow_task: WorkflowTask) -> EnvServiceClient | None:
    """Give an episode its environment handle when its task came from an env service; returns it."""
    if workflow_task.env is None:
        workflow_task.env = EnvServiceClient.for_task(workflow_task.task)
    return workflow_task.env
