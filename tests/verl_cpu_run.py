"""`python -m ajet --backbone=verl` with `n_gpus_per_node: 0` on a tiny model: the run both verl-on-CPU
test modules drive (the hf rollout in test_verl_cpu, verl's vLLM rollout in test_verl_cpu_vllm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKFLOW = '''
from ajet.schema import WorkflowOutput
from ajet.testing.reply_hash import reply_hash_reward
from ajet.workflow import Workflow


class AskOnce(Workflow):
    """One model call, rewarded by a hash of the reply: every GRPO group of distinct samples has
    non-zero advantages, so `grad_norm > 0` holds at every step."""

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": workflow_task.task.main_query}], max_tokens=8
        )
        text = reply.choices[0].message.content or ""
        reward = reply_hash_reward(text)
        return WorkflowOutput(reward=reward, metadata={"final_answer": text})
'''


def run_ajet_on_verl_cpu(
    tmp_path: Path, *, model_path: str = "builtin:tiny-qwen2-random", rollout: dict | None = None,
    project_name: str = "verl_cpu", timeout: float = 600, **trainer_common,
) -> list[dict]:
    """Run `python -m ajet --backbone=verl` on 4 tasks (2 steps of 2 tasks x 2 episodes) with a
    tiny random Qwen2 (or `model_path`); `rollout` and `trainer_common` add to those sections.
    Returns the per-step metrics verl logged."""
    import yaml

    (tmp_path / "wf.py").write_text(WORKFLOW)
    rows = [("What is 1+1?", 2), ("What is 2+3?", 5), ("What is 4+4?", 8), ("What is 3+6?", 9)]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in rows))
    conf = {
        "ajet": {
            "project_name": project_name,
            "experiment_name": "two_steps",
            "task_reader": {"type": "dataset_file", "dataset_file": {"training": {"file_path": str(tmp_path / "tasks.jsonl")}}},
            "rollout": {
                "user_workflow": f"{tmp_path / 'wf.py'}->AskOnce",
                "num_repeat": 2,
                "max_env_worker": 4,
                "max_response_length_in_one_turn": 8,
                "proxy_host": "127.0.0.1",
                "max_model_len": 512,
                **(rollout or {}),
            },
            "task_judge": {"judge_protocol": None},
            "model": {"path": model_path},
            "data": {"train_batch_size": 2, "max_prompt_length": 128, "max_response_length": 16, "shuffle": False},
            "trainer_common": {
                "experiment_dir": str(tmp_path / "run"),
                "resume": "never",
                "n_gpus_per_node": 0,
                "total_training_steps": 2,
                "micro_batch_size": 2,
                "logger": ["console", "jsonl"],
                "optim": {"lr": 0.01},
                **trainer_common,
            },
        }
    }
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(conf))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # This checkout's ajet, not whichever one is installed (the subprocess runs in tmp_path).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "ajet", "--conf", str(tmp_path / "conf.yaml"), "--backbone=verl"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return [step.get("data", step) for step in steps]
