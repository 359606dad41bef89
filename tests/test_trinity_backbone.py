"""The trinity backbone on the CPU: the config translation (and Trinity's own load_config /
check_and_update accepting it), the taskset through Trinity's file reader and workflow registry, one
ajet episode played by the Trinity workflow into Experiences token for token (and through Trinity's
to_data_proto), GRPO grouping by task with Trinity's advantage function, the engine over a fake vLLM
completions server, the log reader and the launcher's messages.

No GPU and no vLLM: the rollout model server is tests/fake_vllm_server.py (ajet's ScriptedEngine
behind vLLM's completions endpoint on 127.0.0.1). Tests that need trinity-rft skip where it is not
installed; CI runs this file in an environment with `ajet[trinity]` (see .ci/run).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_vllm_server import serve_completions
from proxy_helpers import tokenizer, tool_call_text

from ajet.backbone import LaunchOptions, check_config
from ajet.backbone.trinity import launch
from ajet.backbone.trinity.config_translation import (
    CONFIG_PATH_ARG,
    WORKFLOW_TYPE,
    TrinityPaths,
    translate_config,
)
from ajet.backbone.trinity.logs import failure_records, read_trinity_logs
from ajet.backbone.trinity.server_engine import TrinityServerEngine, completion_request
from ajet.backbone.trinity.taskset import task_from_row, task_to_row, write_taskset
from ajet.config import ConfigError, load_config
from ajet.engine.base import SamplingParams
from ajet.engine.scripted import ScriptedEngine, scripted_logprob
from ajet.launcher import main
from ajet.schema import EpisodeResult, Sample, Task

REPO = Path(__file__).resolve().parents[1]
MATH_YAML = REPO / "tutorial" / "example_math_agent" / "math_agent.yaml"
WORKFLOWS = Path(__file__).resolve().parent / "trinity_workflows.py"
HAS_TRINITY = importlib.util.find_spec("trinity") is not None
needs_trinity = pytest.mark.skipif(not HAS_TRINITY, reason='trinity-rft is not installed (pip install "ajet[trinity]")')


def math_cfg(*overrides: str):
    return load_config(MATH_YAML, ["model.path=builtin:tiny-qwen2-random", *overrides])


def paths(tmp_path: Path, has_validation: bool = False) -> TrinityPaths:
    return TrinityPaths(
        model_path="/models/m",
        tasks_dir=tmp_path / "tasks",
        ajet_config_path=tmp_path / "ajet_config.yaml",
        checkpoint_root_dir=tmp_path / "ckpt",
        has_validation=has_validation,
    )


# -- the translation (pure) -------------------------------------------------------------------------


def test_translation_of_the_math_agent_yaml(tmp_path):
    cfg = math_cfg()
    t = translate_config(cfg, paths(tmp_path), environ={})

    assert t["mode"] == "colocate"  # one node, one GPU (the default): explorer and trainer share it
    assert (t["project"], t["name"]) == ("example_math_agent", "math_agent")
    assert t["cluster"] == {"node_num": 1, "gpu_per_node": 1}
    assert t["model"]["model_path"] == "/models/m"
    # per model call, as the proxy caps turns
    assert t["model"]["max_response_tokens"] == cfg.rollout.max_response_length_in_one_turn
    a = t["algorithm"]
    assert a["algorithm_type"] == "multi_step_grpo" and a["repeat_times"] == 4
    assert a["policy_loss_fn_args"]["clip_range_low"] == 0.2 and a["policy_loss_fn_args"]["clip_range_high"] == 0.28
    assert a["kl_loss_fn"] == "none" and a["optimizer"]["lr"] == cfg.trainer_common.optim.lr
    assert t["buffer"]["batch_size"] == cfg.data.train_batch_size
    assert t["buffer"]["total_steps"] == cfg.trainer_common.total_training_steps
    taskset = t["buffer"]["explorer_input"]["taskset"]
    assert taskset["default_workflow_type"] == WORKFLOW_TYPE == "ajet.backbone.trinity.workflow.AjetTrinityWorkflow"
    assert taskset["path"] == str(tmp_path / "tasks") and taskset["split"] == "train"
    assert taskset["workflow_args"] == {CONFIG_PATH_ARG: str(tmp_path / "ajet_config.yaml")}
    assert "eval_tasksets" not in t["buffer"]["explorer_input"]  # test_freq 0, no val_before_train
    rm = t["explorer"]["rollout_model"]
    assert rm["enable_openai_api"] is True and rm["enable_history"] is False and rm["engine_num"] == 1
    assert t["explorer"]["max_retry_times"] == 0 and t["explorer"]["concurrent_mode"] == "asynchronous"
    # concurrent episodes / episodes per task
    assert t["explorer"]["runner_per_model"] == cfg.rollout.max_env_worker // cfg.rollout.num_repeat
    assert t["monitor"] == {"monitor_type": "tensorboard"}  # SwanLab needs SWANLAB_API_KEY in Trinity
    assert translate_config(math_cfg(), paths(tmp_path), environ={"SWANLAB_API_KEY": "k"})["monitor"] == {"monitor_type": "swanlab"}


@pytest.mark.parametrize(("gpus", "nodes", "tp", "engines"), [(8, 1, 1, 4), (8, 1, 2, 2), (4, 2, 1, 4), (2, 1, 1, 1)])
def test_several_gpus_run_both_with_half_for_rollout_engines(tmp_path, gpus, nodes, tp, engines):
    cfg = math_cfg(f"trainer_common.n_gpus_per_node={gpus}", f"trainer_common.nnodes={nodes}",
                   f"rollout.tensor_model_parallel_size={tp}")
    t = translate_config(cfg, paths(tmp_path), environ={})
    assert t["mode"] == "both"
    assert t["explorer"]["rollout_model"]["engine_num"] == engines


def test_kl_lora_clip_c_validation_and_val_only_translate(tmp_path):
    cfg = math_cfg("trainer_common.use_kl_loss=true", "trainer_common.kl_loss_type=mse", "trainer_common.kl_loss_coef=0.05",
                   "lora.lora_rank=8", "lora.lora_alpha=16", "trainer_common.clip_ratio_c=3.5", "trainer_common.test_freq=2",
                   "rollout.val_kwargs.num_repeat=2", "trainer_common.optim.grad_clip=null")
    t = translate_config(cfg, paths(tmp_path, has_validation=True), environ={})
    assert t["algorithm"]["kl_loss_fn"] == "k2" and t["algorithm"]["kl_loss_fn_args"] == {"kl_coef": 0.05}
    assert t["algorithm"]["policy_loss_fn_args"]["clip_ratio_c"] == 3.5
    assert t["model"]["lora_configs"] == [{"name": "ajet", "lora_rank": 8, "lora_alpha": 16, "target_modules": "all-linear"}]
    (eval_set,) = t["buffer"]["explorer_input"]["eval_tasksets"]
    assert eval_set["split"] == "validation" and eval_set["repeat_times"] == 2
    assert eval_set["rollout_args"]["temperature"] == 0.0  # val_kwargs.do_sample false: greedy
    assert t["explorer"]["eval_interval"] == 2
    assert t["trainer"]["grad_clip"] == t["algorithm"]["optimizer"]["clip_grad"] == 1.0e9  # null: no clipping
    assert translate_config(math_cfg("trainer_common.val_only=true"), paths(tmp_path, True), environ={})["mode"] == "bench"


def test_trinity_section_passes_through_and_wins(tmp_path):
    cfg = math_cfg()
    cfg.trinity = {"explorer": {"rollout_model": {"engine_num": 3}}, "synchronizer": {"sync_interval": 2}}
    t = translate_config(cfg, paths(tmp_path), environ={})
    assert t["explorer"]["rollout_model"]["engine_num"] == 3
    assert t["explorer"]["rollout_model"]["enable_openai_api"] is True  # the rest of the section stays
    assert t["synchronizer"] == {"sync_interval": 2, "sync_offset": 0}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer_common.n_gpus_per_node=0", "ajet.trainer_common.n_gpus_per_node"),
        ("trainer_common.async.max_staleness=1", "ajet.trainer_common.async.max_staleness"),
        ("trainer_common.algorithm.norm_adv_by_std_in_grpo=false", "ajet.trainer_common.algorithm.norm_adv_by_std_in_grpo"),
        ("trainer_common.mini_batch_num=2", "ajet.trainer_common.mini_batch_num"),
        ("trainer_common.rollout_correction.tis_cap=2.0", "ajet.trainer_common.rollout_correction.tis_cap"),
        ("trainer_common.resume=/some/checkpoint", "ajet.trainer_common.resume"),
    ],
)
def test_settings_trinity_cannot_honour_stop_with_the_key_and_a_fix(override, key, capsys):
    with pytest.raises(ConfigError) as err:
        check_config(math_cfg(override), "trinity")
    assert err.value.key == key and "--backbone=trinity" in str(err.value)
    # the launcher turns it into its one-line config error before anything starts
    assert main(["--conf", str(MATH_YAML), "--backbone=trinity", "--dry-run", "model.path=builtin:tiny-qwen2-random", override]) == 2
    assert key in capsys.readouterr().err


def test_the_same_settings_pass_on_the_other_backbones():
    check_config(math_cfg("trainer_common.async.max_staleness=1"), "debug")


# -- the launcher's messages ------------------------------------------------------------------------


def test_missing_trinity_is_one_line_naming_the_install(tmp_path, capsys):
    options = LaunchOptions(backbone="trinity", run_dir=tmp_path / "run", with_ray=True)
    code = launch.run(math_cfg(), options, find_spec=lambda name: None)
    err = capsys.readouterr().err.strip()
    assert code == launch.EXIT_MISSING_DEPENDENCIES
    assert len(err.splitlines()) == 1 and 'pip install "ajet[trinity]"' in err and "trinity-rft 0.6.0" in err
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.skipif(HAS_TRINITY, reason="checks the launch where trinity-rft is missing")
def test_ajet_backbone_trinity_without_trinity_exits_2_with_the_install_line(tmp_path, capsys):
    code = main(["--conf", str(MATH_YAML), "--backbone=trinity", "--with-ray", "model.path=builtin:tiny-qwen2-random",
                 f"trainer_common.experiment_dir={tmp_path / 'run'}"])
    assert code == launch.EXIT_MISSING_DEPENDENCIES
    assert capsys.readouterr().err.strip() == launch.INSTALL_LINE


def test_dry_run_without_trinity_prints_the_translation_and_says_it_was_not_validated(tmp_path):
    cfg = math_cfg(f"trainer_common.experiment_dir={tmp_path / 'run'}")
    text = launch.dry_run_text(cfg, find_spec=lambda name: None)
    assert text.startswith("# translated Trinity-RFT config")
    assert "algorithm_type: multi_step_grpo" in text and f"default_workflow_type: {WORKFLOW_TYPE}" in text
    assert text.splitlines()[-1].startswith("# not validated here: ") and 'pip install "ajet[trinity]"' in text
    assert not (tmp_path / "run").exists()


def test_a_node_without_the_gpus_says_so_unless_joining_a_cluster():
    cfg = math_cfg("trainer_common.n_gpus_per_node=2")
    problem = launch.gpu_problem(cfg, environ={}, cuda_devices=0)
    assert "needs 2 NVIDIA GPU(s)" in problem and "ajet.trainer_common.n_gpus_per_node" in problem
    assert launch.gpu_problem(cfg, environ={}, cuda_devices=2) is None
    assert launch.gpu_problem(cfg, environ={"RAY_ADDRESS": "head:6379"}, cuda_devices=0) is None


TRINITY_LOG = (
    "INFO 12-01 21:00:00 [explorer.py:10] Explorer started\n"
    "ERROR 12-01 21:00:05 [workflow_runner.py:279] WorkflowRunner single run error: boom\r\n"
    "ERROR 12-01 21:00:05 [workflow_runner.py:279] Traceback (most recent call last):\r\n"
    "ERROR 12-01 21:00:05 [workflow_runner.py:279]   File \"x.py\", line 1\n"
    "WARNING 12-01 21:00:06 [explorer.py:20] slow step\n"
    "CRITICAL 12-01 21:00:07 [launcher.py:300] Explorer or Trainer failed:\n"
)


def test_log_reader_counts_error_records_not_lines():
    records = failure_records(TRINITY_LOG, "explorer.log")
    assert [(r.level, r.source, r.headline) for r in records] == [
        ("ERROR", "workflow_runner.py:279", "WorkflowRunner single run error: boom"),
        ("CRITICAL", "launcher.py:300", "Explorer or Trainer failed:"),
    ]
    assert len(records[0].lines) == 3  # the traceback lines belong to the record
    assert failure_records("INFO 12-01 21:00:00 [a.py:1] fine\nprint output\n") == []


def test_exit_code_reads_trinitys_logs_not_just_the_stage(tmp_path, capsys):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / "explorer.log").write_text("INFO 12-01 21:00:00 [explorer.py:10] fine\n")
    ok = SimpleNamespace(stage="both", success=True, error=None)
    assert launch.stage_exit_code(ok, log_dir) == 0

    (log_dir / "trainer.log").write_text(TRINITY_LOG)
    assert launch.stage_exit_code(ok, log_dir) == launch.EXIT_TRINITY_FAILED
    err = capsys.readouterr().err
    assert "stage returned, but its actors logged errors" in err and "2 error record(s)" in err
    assert "trainer.log [workflow_runner.py:279] WorkflowRunner single run error: boom" in err

    failed = SimpleNamespace(stage="both", success=False, error=SimpleNamespace(type_name="RuntimeError", message="no GPU\nmore"))
    (log_dir / "trainer.log").unlink()
    assert launch.stage_exit_code(failed, log_dir) == launch.EXIT_TRINITY_FAILED
    assert "Trinity's both stage failed: RuntimeError: no GPU" in capsys.readouterr().err
    assert read_trinity_logs(tmp_path / "missing").ok


# -- the taskset and the engine over a (fake) vLLM server ---------------------------------------------


def test_taskset_rows_carry_the_whole_task(tmp_path):
    task = Task(main_query="What is 2+2?", task_id="t-9", metadata={"reference_answer": "4", "nested": {"a": [1, 2]}})
    path = write_taskset([task, task], tmp_path / "train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["task_id"] == "t-9" and rows[0]["question"] == "What is 2+2?"
    assert task_from_row(rows[0]) == task == task_from_row(task_to_row(task))
    with pytest.raises(KeyError, match="ajet_task"):
        task_from_row({"question": "q"})


async def test_server_engine_sends_token_ids_and_returns_what_was_sampled():
    tok = tokenizer()
    scripted = ScriptedEngine(tok, lambda text: "hello there")
    with serve_completions(scripted) as (base, requests):
        engine = TrinityServerEngine(base, tok, model_name="/models/m", max_model_len=1024)
        engine.policy_version = 7
        prompt = tok.encode("Hi!", add_special_tokens=False)
        params = SamplingParams(max_tokens=50, temperature=0.6, top_p=0.9, top_k=10, stop_token_ids=[scripted.stop_token_id])
        out = await engine.generate(prompt, params)
        short = await engine.generate(prompt, SamplingParams(max_tokens=2))
        await engine.aclose()

    expected = tok.encode("hello there", add_special_tokens=False) + [scripted.stop_token_id]
    assert out.token_ids == expected  # ids as sampled, stop token included: nothing re-tokenised
    assert out.logprobs == pytest.approx([scripted_logprob(i) for i in range(len(expected))])
    assert out.finish_reason == "stop" and out.policy_versions == [7] * len(expected)
    assert short.finish_reason == "length" and len(short.token_ids) == 2
    assert requests[0] == completion_request("/models/m", prompt, params)
    assert requests[0]["prompt"] == prompt and requests[0]["return_token_ids"] is True and requests[0]["logprobs"] == 0
    assert requests[0]["stop_token_ids"] == [scripted.stop_token_id]


async def test_server_engine_says_what_is_missing_from_a_reply():
    import httpx

    def handler(request):
        if request.url.path.endswith("/completions") and json.loads(request.content)["max_tokens"] == 1:
            return httpx.Response(200, json={"choices": [{"text": "x", "finish_reason": "stop"}]})
        return httpx.Response(500, text="engine dead")

    engine = TrinityServerEngine("http://trinity", tokenizer(), model_name="m", transport=httpx.MockTransport(handler))
    with pytest.raises(RuntimeError, match="without sampled token ids"):
        await engine.generate([1, 2], SamplingParams(max_tokens=1))
    with pytest.raises(RuntimeError, match="answered 500"):
        await engine.generate([1, 2], SamplingParams(max_tokens=2))


# -- against Trinity's own classes ------------------------------------------------------------------


def _write_tasks(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in rows))
    return path


def trinity_cfg(tmp_path: Path, *overrides: str):
    train = _write_tasks(tmp_path / "train.jsonl", [("What is 40 + 2?", "42"), ("What is 1 + 1?", "2")])
    val = _write_tasks(tmp_path / "val.jsonl", [("What is 3 + 3?", "6")])
    return math_cfg(
        "task_reader.type=dataset_file",
        f"task_reader.dataset_file.training.file_path={train}",
        f"task_reader.dataset_file.validation.file_path={val}",
        f"rollout.user_workflow={WORKFLOWS}->AddToolWorkflow",
        f"task_judge.judge_protocol={WORKFLOWS}->AnswerAndToolJudge",
        "rollout.proxy_host=127.0.0.1",
        f"trainer_common.experiment_dir={tmp_path / 'run'}",
        *overrides,
    )


@needs_trinity
def test_trinity_accepts_the_translation_and_derives_the_rest(tmp_path):
    prepared = launch.prepare_run(trinity_cfg(tmp_path, "trainer_common.test_freq=1"), tmp_path / "run")
    c = prepared.config
    assert type(c).__module__ == "trinity.common.config"
    assert c.mode == "colocate" and c.cluster.explorer_gpu_num == 1 and c.cluster.trainer_gpu_num == 1
    assert c.algorithm.advantage_fn == "step_wise_grpo"  # what multi_step_grpo selects
    assert c.algorithm.policy_loss_fn == "ppo" and c.algorithm.policy_loss_fn_args["clip_range_high"] == 0.28
    assert c.buffer.train_batch_size == 2 * 4  # tasks per step x episodes per task
    (taskset,) = c.buffer.explorer_input.tasksets
    assert taskset.repeat_times == 4 and taskset.default_workflow_type == WORKFLOW_TYPE
    (eval_set,) = c.buffer.explorer_input.eval_tasksets
    assert eval_set.split == "validation" and eval_set.is_eval
    assert c.explorer.rollout_model.enable_openai_api
    assert c.explorer.rollout_model.model_path.endswith("tiny-qwen2-random")  # resolved from builtin:
    assert c.log.save_dir.startswith(str(tmp_path / "run" / "trinity" / "checkpoints"))
    # what the launcher wrote: the taskset, the ajet config the workflow reads back, the Trinity config
    assert (tmp_path / "run" / "trinity" / "tasks" / "train.jsonl").exists()
    assert load_config(tmp_path / "run" / "ajet_config.yaml").rollout.num_repeat == 4
    assert prepared.config_path.read_text().startswith("mode: colocate")


@needs_trinity
def test_trinity_rejects_unknown_and_invalid_keys_with_the_ajet_key(tmp_path):
    cfg = trinity_cfg(tmp_path)
    cfg.trinity = {"explorer": {"rollout_modle": {"engine_num": 2}}}
    with pytest.raises(ConfigError) as err:
        launch.prepare_run(cfg, tmp_path / "run")
    assert err.value.key == "ajet.trinity.explorer.rollout_modle"
    cfg.trinity = {"explorer": {"concurrent_mode": "sideways"}}
    with pytest.raises(ConfigError, match="check_and_update rejected.*concurrent_mode"):
        launch.prepare_run(cfg, tmp_path / "run")


@needs_trinity
async def test_trinitys_reader_and_registry_hand_tasks_to_the_ajet_workflow(tmp_path):
    from trinity.buffer import get_buffer_reader
    from trinity.common.workflows import WORKFLOWS

    from ajet.backbone.trinity.workflow import AjetTrinityWorkflow

    assert WORKFLOWS.get(WORKFLOW_TYPE) is AjetTrinityWorkflow
    cfg = trinity_cfg(tmp_path)
    prepared = launch.prepare_run(cfg, tmp_path / "run")
    tasks = await get_buffer_reader(prepared.config.buffer.explorer_input.tasksets[0]).read()
    assert len(tasks) == 2 and all(t.workflow is AjetTrinityWorkflow for t in tasks)
    assert {task_from_row(t.raw_task).main_query for t in tasks} == {"What is 40 + 2?", "What is 1 + 1?"}
    assert tasks[0].workflow_args[CONFIG_PATH_ARG] == str(tmp_path / "run" / "ajet_config.yaml")


class FakeModelWrapper:
    """What AjetTrinityWorkflow reads of Trinity's ModelWrapper (which imports vLLM): the API address
    (set by ModelWrapper.prepare when enable_openai_api is on), model path, key and version."""

    def __init__(self, api_address: str, model_path: str, version: int = 3) -> None:
        self.api_address, self.model_path, self.api_key, self._version = api_address, model_path, "EMPTY", version

    @property
    async def model_version_async(self) -> int:
        return self._version


def _scripted_reply(text: str) -> str:
    if "<tool_response>" not in text:
        return tool_call_text("add", {"a": 40, "b": 2}, content="Let me add.")
    return "42"


@needs_trinity
async def test_the_trinity_workflow_plays_one_ajet_episode_into_experiences_token_for_token(tmp_path):
    from trinity.buffer import get_buffer_reader
    from trinity.trainer.verl.utils import to_data_proto

    from ajet.backbone.trinity.workflow import close_worker_contexts

    cfg = trinity_cfg(tmp_path)
    prepared = launch.prepare_run(cfg, tmp_path / "run")
    tasks = await get_buffer_reader(prepared.config.buffer.explorer_input.tasksets[0]).read()
    task = next(t for t in tasks if "40 + 2" in task_from_row(t.raw_task).main_query)
    tok = tokenizer()
    scripted = ScriptedEngine(tok, _scripted_reply)
    try:
        with serve_completions(scripted) as (base, requests):
            workflow = task.to_workflow(FakeModelWrapper(base, prepared.config.model.model_path), [])
            (exp,) = await workflow.run_async()
    finally:
        close_worker_contexts()

    assert len(requests) == 2  # two model calls, both as token ids to the completions endpoint
    (first_prompt, second_prompt) = (r["prompt"] for r in requests)
    first_reply, second_reply = (r.completion.token_ids for r in scripted.requests)
    n1, n2 = len(first_reply), len(second_reply)
    # one merged multi-turn sample: prompt | reply 1 | tool turn | reply 2
    assert exp.tokens.tolist() == second_prompt + second_reply
    assert exp.prompt_length == len(first_prompt)
    tool_len = len(exp.tokens) - exp.prompt_length - n1 - n2
    assert tool_len > 0
    assert exp.action_mask.tolist() == [True] * n1 + [False] * tool_len + [True] * n2
    expected_lp = [scripted_logprob(i) for i in range(n1)] + [0.0] * tool_len + [scripted_logprob(i) for i in range(n2)]
    assert exp.logprobs.tolist() == pytest.approx(expected_lp)
    assert exp.reward == 1.5  # right answer + one tool call seen in the turns
    assert exp.eid.step == 0 and exp.metrics["ajet/tool_calls"] == 1.0 and exp.metrics["ajet/turns"] == 2.0
    rollout = cfg.rollout
    assert requests[0]["temperature"] == rollout.temperature
    assert requests[0]["max_tokens"] <= rollout.max_response_length_in_one_turn

    batch = to_data_proto([exp], pad_token_id=tok.pad_token_id or 0, model=object(), logger=None)
    assert batch.batch["responses"][0].tolist() == exp.tokens[exp.prompt_length:].tolist()
    assert batch.batch["response_mask"][0].tolist() == exp.action_mask.tolist()  # loss mask = action mask
    assert batch.batch["rollout_log_probs"][0].tolist() == pytest.approx(expected_lp)  # the sampled logprobs
    assert batch.batch["token_level_scores"][0].tolist()[-1] == 1.5  # reward at the last token


def _sample(task_id: str, episode: str, prompt: int, response: int, reward: float) -> Sample:
    n = prompt + response
    return Sample(input_ids=list(range(n)), loss_mask=[0] * prompt + [1] * response,
                  rollout_logprobs=[0.0] * prompt + [-0.1] * response, token_versions=[-1] * prompt + [0] * response,
                  task_id=task_id, episode_id=episode, reward=reward)


@needs_trinity
def test_grpo_groups_by_task_and_gives_every_sample_of_an_episode_its_advantage(tmp_path):
    import torch
    from trinity.algorithm.advantage_fn import ADVANTAGE_FN

    from ajet.algo.advantages import grpo_advantages
    from ajet.backbone.trinity.experiences import episode_to_experiences

    prepared = launch.prepare_run(trinity_cfg(tmp_path), tmp_path / "run")
    episodes = {  # (task, run): samples; task a's run 0 split into two samples (the agent rewrote its context)
        ("a", 0): [_sample("a", "a0", 4, 3, 1.0), _sample("a", "a0", 5, 2, 1.0)],
        ("a", 1): [_sample("a", "a1", 4, 3, 0.0)],
        ("b", 0): [_sample("b", "b0", 6, 2, 1.0)],
        ("b", 1): [],  # failed before its first model call: still one (masked) experience, reward 0
    }
    rewards = {("a", 0): 1.0, ("a", 1): 0.0, ("b", 0): 1.0, ("b", 1): 0.0}
    experiences = []
    for (task_id, run), samples in episodes.items():
        result = EpisodeResult(task=Task(main_query="q", task_id=task_id), episode_id=f"{task_id}{run}", repeat_index=run,
                               samples=samples, reward=rewards[(task_id, run)], is_success=False,
                               error=None if samples else "RuntimeError: no model call")
        for exp in episode_to_experiences(result, fallback_prompt_ids=[7, 8, 9], pad_token_id=0):
            # what Trinity's WorkflowRunner.run_task sets after the workflow returns
            exp.eid.batch, exp.eid.task, exp.eid.run = 0, task_id, run
            experiences.append(exp)
    assert len(experiences) == 5
    fallback = next(e for e in experiences if e.eid.tid == "0/b" and e.eid.run == 1)
    assert fallback.tokens.tolist() == [7, 8, 9, 0] and fallback.action_mask.tolist() == [False] and fallback.reward == 0.0

    algorithm = prepared.config.algorithm
    advantage_fn = ADVANTAGE_FN.get(algorithm.advantage_fn)(**algorithm.advantage_fn_args)
    out, metrics = advantage_fn(experiences)

    ours = grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), ["a", "a", "b", "b"]).tolist()
    assert ours == pytest.approx([0.7071, -0.7071, 0.7071, -0.7071], abs=1e-4)
    by_run = {(e.eid.task, e.eid.run, e.eid.step): e for e in out}
    expected = {("a", 0): ours[0], ("a", 1): ours[1], ("b", 0): ours[2], ("b", 1): ours[3]}
    for (task_id, run, _step), exp in by_run.items():
        advantage = expected[(task_id, run)]
        assert exp.advantages.tolist() == pytest.approx((exp.action_mask.float() * advantage).tolist(), abs=1e-5)
    assert by_run[("a", 0, 0)].advantages.max().item() == pytest.approx(ours[0], abs=1e-5)
    assert by_run[("a", 0, 1)].advantages.max().item() == pytest.approx(ours[0], abs=1e-5)  # both samples of the episode
    assert metrics["experience_count"] == 5


@needs_trinity
def test_run_writes_the_run_directory_and_returns_what_trinitys_logs_say(tmp_path, monkeypatch, capsys):
    import contextlib

    seen = {}

    @contextlib.contextmanager
    def fake_ray_session(**kwargs):
        seen.update(kwargs)
        yield SimpleNamespace(connected_to_cluster=False)

    def fake_run_stage(config):
        seen["config"] = config
        log_dir = Path(config.log.save_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "explorer.log").write_text(TRINITY_LOG)  # the explorer failed, the stage "succeeded"
        return SimpleNamespace(stage="colocate", success=True, error=None)

    import ajet.ray_utils

    monkeypatch.setattr(ajet.ray_utils, "ray_session", fake_ray_session)
    monkeypatch.setattr(launch, "gpu_problem", lambda cfg: None)
    cfg = trinity_cfg(tmp_path)
    code = launch.run(cfg, LaunchOptions(backbone="trinity", run_dir=tmp_path / "run", with_ray=True), run_stage=fake_run_stage)

    assert code == launch.EXIT_TRINITY_FAILED
    assert "WorkflowRunner single run error: boom" in capsys.readouterr().err
    config = seen["config"]
    assert seen["namespace"] == config.ray_namespace
    env = seen["runtime_env"]["env_vars"]
    assert env["TRINITY_LOG_DIR"] == config.log.save_dir and "AJET_RUN_ID" in env and str(Path.cwd()) in env["PYTHONPATH"]
    assert (tmp_path / "run" / "trinity_config.yaml").exists()
