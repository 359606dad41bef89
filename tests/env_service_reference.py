"""A reference environment service speaking the protocol of ajet/env_service/client.py.

Arithmetic tasks ("What is 17 + 25?"): the agent steps with an action text; the last integer in it is
its answer. A right answer ends the episode with reward 1; a wrong one says "too low"/"too high" and
the episode ends after MAX_STEPS tries. `evaluate` gives 1.0 / is_success when solved.

Run it standalone (`python tests/env_service_reference.py --port 8080`) or, in tests,
`with serve_in_thread() as base_url: ...` (127.0.0.1, a free port).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

MAX_STEPS = 3
SPLITS = {"train": 8, "dev": 4}


@dataclass
class ArithmeticTask:
    task_id: str
    a: int
    b: int

    @property
    def query(self) -> str:
        return f"What is {self.a} + {self.b}? Answer with a number."

    @property
    def answer(self) -> int:
        return self.a + self.b


@dataclass
class Instance:
    task: ArithmeticTask
    steps: int = 0
    solved: bool = False
    done: bool = False


def make_tasks(seed: int = 0) -> dict[str, list[ArithmeticTask]]:
    rng = random.Random(seed)
    return {
        split: [ArithmeticTask(f"{split}-{i}", rng.randint(1, 99), rng.randint(1, 99)) for i in range(count)]
        for split, count in SPLITS.items()
    }


class CreateInstance(BaseModel):
    task_id: str
    env_type: str | None = None


class Step(BaseModel):
    action: Any = None


def create_app(seed: int = 0) -> FastAPI:
    tasks = make_tasks(seed)
    by_id = {task.task_id: task for split_tasks in tasks.values() for task in split_tasks}
    instances: dict[str, Instance] = {}
    app = FastAPI(title="ajet reference env service (arithmetic)")

    def instance(instance_id: str) -> Instance:
        if instance_id not in instances:
            raise HTTPException(404, f"unknown instance {instance_id!r}")
        return instances[instance_id]

    @app.get("/tasks")
    def list_tasks(split: str = "train", env_type: str | None = None) -> list[dict[str, Any]]:
        if split not in tasks:
            raise HTTPException(400, f"unknown split {split!r}; splits: {', '.join(tasks)}")
        return [{"task_id": t.task_id, "query": t.query, "metadata": {"a": t.a, "b": t.b}} for t in tasks[split]]

    @app.post("/instances")
    def create(body: CreateInstance) -> dict[str, Any]:
        if body.task_id not in by_id:
            raise HTTPException(404, f"unknown task_id {body.task_id!r}")
        instance_id = uuid.uuid4().hex
        instances[instance_id] = Instance(by_id[body.task_id])
        return {"instance_id": instance_id, "observation": by_id[body.task_id].query}

    @app.post("/instances/{instance_id}/step")
    def step(instance_id: str, body: Step) -> dict[str, Any]:
        state = instance(instance_id)
        if state.done:
            raise HTTPException(409, "episode is over")
        state.steps += 1
        numbers = re.findall(r"-?\d+", str(body.action))
        guess = int(numbers[-1]) if numbers else None
        if guess == state.task.answer:
            state.solved = state.done = True
            return {"observation": "correct", "reward": 1.0, "done": True, "info": {"steps": state.steps}}
        state.done = state.steps >= MAX_STEPS
        hint = "no number found" if guess is None else ("too low" if guess < state.task.answer else "too high")
        return {"observation": hint, "reward": 0.0, "done": state.done, "info": {"steps": state.steps}}

    @app.post("/instances/{instance_id}/evaluate")
    def evaluate(instance_id: str) -> dict[str, Any]:
        state = instance(instance_id)
        return {"reward": 1.0 if state.solved else 0.0, "is_success": state.solved}

    @app.delete("/instances/{instance_id}")
    def delete(instance_id: str) -> dict[str, Any]:
        instance(instance_id)
        del instances[instance_id]
        return {"ok": True}

    app.state.instances = instances  # tests check that episodes clean up after themselves
    app.state.tasks = tasks
    return app


@contextlib.contextmanager
def serve_in_thread(app: FastAPI | None = None) -> Iterator[str]:
    """Serve `app` (default: create_app()) on 127.0.0.1 at a free port; yields the base URL."""
    app = app or create_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the reference env service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    uvicorn.run(create_app(args.seed), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
