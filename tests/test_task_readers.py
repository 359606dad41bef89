"""Task readers against real files (GSM8K, parquet, json) and the reference env service over loopback."""

from __future__ import annotations

import json
import logging
import pickle
import re
import socket
import subprocess
import sys

import datasets
import pytest
from env_service_reference import create_app, make_tasks, serve_in_thread

from ajet.config import load_config
from ajet.env_service import EnvServiceClient, EnvServiceError, bind_env
from ajet.judge.env_service import EnvServiceJudge
from ajet.schema import WorkflowOutput, WorkflowTask
from ajet.task_reader import TaskReaderError, build_task_reader, solution_final_answer


def gsm8k_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gsm8k_config(gsm8k_dir, *overrides):
    return load_config(
        None,
        [
            f"task_reader.huggingface_dat_repo.dataset_path={gsm8k_dir}",
            # Both splits read the small test file: the 7k-row train split adds nothing but time.
            "task_reader.huggingface_dat_repo.training_split=test",
            "task_reader.huggingface_dat_repo.validation_split=test",
            *overrides,
        ],
    )


# ------------------------------------------------------------------------ huggingface_dat_repo


def test_gsm8k_directory_reads_every_row_into_tasks(gsm8k_dir):
    rows = gsm8k_rows(gsm8k_dir / "test.jsonl")
    reader = build_task_reader(gsm8k_config(gsm8k_dir, "data.shuffle=false"))
    tasks = reader.train_tasks()

    assert len(tasks) == len(rows)
    for index in (0, len(rows) // 2, len(rows) - 1):
        task, row = tasks[index], rows[index]
        assert task.main_query == row["question"]
        assert task.init_messages == [{"role": "user", "content": row["question"]}]
        assert task.task_id == f"test-{index}"
        assert task.metadata["answer"] == row["answer"]
        # The bare number after "#### ", commas removed, checked against an independent parse.
        expected = re.search(r"####\s*(.+)$", row["answer"]).group(1).replace(",", "").strip()
        assert task.metadata["reference_answer"] == expected
    assert any("," in re.search(r"####\s*(.+)$", r["answer"]).group(1) for r in rows)  # commas do occur


def test_shuffle_is_seeded_and_limited_by_debug_first_n(gsm8k_dir):
    plain = [t.task_id for t in build_task_reader(gsm8k_config(gsm8k_dir, "data.shuffle=false")).train_tasks()]
    seed_a = [t.task_id for t in build_task_reader(gsm8k_config(gsm8k_dir, "data.seed=1")).train_tasks()]
    seed_a_again = [t.task_id for t in build_task_reader(gsm8k_config(gsm8k_dir, "data.seed=1")).train_tasks()]
    seed_b = [t.task_id for t in build_task_reader(gsm8k_config(gsm8k_dir, "data.seed=2")).train_tasks()]
    assert sorted(seed_a) == sorted(plain) and seed_a != plain
    assert seed_a == seed_a_again and seed_a != seed_b

    limited = build_task_reader(gsm8k_config(gsm8k_dir, "data.seed=1", "debug.debug_first_n_tasks=5"))
    assert [t.task_id for t in limited.train_tasks()] == seed_a[:5]
    # Validation keeps source order and is not cut by the debug limit.
    assert [t.task_id for t in limited.val_tasks()] == plain


def test_local_shard_layout_with_dataset_name_and_unknown_split(tmp_path):
    shard_dir = tmp_path / "gsm_copy" / "main"
    shard_dir.mkdir(parents=True)
    datasets.Dataset.from_list([{"question": f"q{i}", "answer": f"work\n#### {i}"} for i in range(3)]).to_parquet(
        str(shard_dir / "train-00000-of-00001.parquet")
    )
    datasets.Dataset.from_list([{"question": "v", "answer": "#### 9"}]).to_parquet(
        str(shard_dir / "test-00000-of-00001.parquet")
    )
    cfg = load_config(
        None,
        [
            f"task_reader.huggingface_dat_repo.dataset_path={tmp_path / 'gsm_copy'}",
            "task_reader.huggingface_dat_repo.dataset_name=main",
            "data.shuffle=false",
        ],
    )
    reader = build_task_reader(cfg)
    assert [t.metadata["reference_answer"] for t in reader.train_tasks()] == ["0", "1", "2"]
    assert [t.main_query for t in reader.val_tasks()] == ["v"]

    bad = load_config(
        None,
        [
            f"task_reader.huggingface_dat_repo.dataset_path={tmp_path / 'gsm_copy'}",
            "task_reader.huggingface_dat_repo.training_split=validation",
        ],
    )
    with pytest.raises(TaskReaderError) as info:
        build_task_reader(bad).train_tasks()
    assert "split 'validation' not found" in str(info.value) and "test, train" in str(info.value)


def test_missing_local_path_is_reported():
    cfg = load_config(None, ["task_reader.huggingface_dat_repo.dataset_path=/nonexistent/gsm8k"])
    with pytest.raises(TaskReaderError, match="no such file or directory"):
        build_task_reader(cfg).train_tasks()


@pytest.mark.network_loopback
def test_unreachable_hub_says_how_to_use_local_files(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    script = (
        "from ajet.config import load_config\n"
        "from ajet.task_reader import build_task_reader, TaskReaderError\n"
        "cfg = load_config(None, ['task_reader.huggingface_dat_repo.dataset_path=some-org/some-dataset'])\n"
        "try:\n    build_task_reader(cfg).train_tasks()\n"
        "except TaskReaderError as e:\n    print(e)\n"
    )
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=str(_repo_root())
    )
    assert "cannot load hub dataset 'some-org/some-dataset'" in out.stdout, out.stderr
    assert "download_dataset.py" in out.stdout and "dataset_path" in out.stdout


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- dataset_file


def test_parquet_file_with_custom_columns_and_messages(tmp_path):
    rows = [
        {"uid": "a1", "prompt": "What is 2+2?", "solution": "4", "messages": None},
        {
            "uid": "a2",
            "prompt": "Say hi",
            "solution": "hi",
            "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Say hi"}],
        },
    ]
    path = tmp_path / "tasks.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    cfg = load_config(
        None,
        [
            "task_reader.type=dataset_file",
            f"task_reader.dataset_file.training.file_path={path}",
            "task_reader.query_field=prompt",
            "task_reader.answer_field=solution",
            "task_reader.id_field=uid",
            "data.shuffle=false",
        ],
    )
    reader = build_task_reader(cfg)
    first, second = reader.train_tasks()
    assert (first.task_id, first.main_query, first.metadata["reference_answer"]) == ("a1", "What is 2+2?", "4")
    assert first.init_messages == [{"role": "user", "content": "What is 2+2?"}]
    assert second.init_messages == rows[1]["messages"]  # the row's own conversation is kept
    assert second.metadata["uid"] == "a2"
    assert reader.val_tasks() == []  # no validation file configured


def test_json_array_file_through_the_agentjet_alias(tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"question": f"q{i}", "answer": str(i * 2)} for i in range(4)]))
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(json.dumps({"question": f"v{i}", "answer": "#### 1,000"}) for i in range(2)))
    conf = tmp_path / "exp.yaml"
    conf.write_text(f"""
ajet:
  data: {{shuffle: false}}
  task_reader:
    type: jsonl_dataset_file
    jsonl_dataset_file:
      training: {{file_path: {train}}}
      validation: {{file_path: {val}}}
""")
    reader = build_task_reader(load_config(conf))
    assert [t.main_query for t in reader.train_tasks()] == ["q0", "q1", "q2", "q3"]
    assert [t.metadata["reference_answer"] for t in reader.train_tasks()] == ["0", "2", "4", "6"]
    assert [t.task_id for t in reader.val_tasks()] == ["validation-0", "validation-1"]
    assert reader.val_tasks()[0].metadata["reference_answer"] == "1000"


def _rows_with_a_hole(tmp_path):
    path = tmp_path / "holes.jsonl"
    rows = [
        {"question": "q0", "answer": "1"},
        {"question": "q1"},
        {"question": "q2", "answer": "3"},
        {"question": "q3", "answer": None},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_missing_field_error_names_file_row_and_column(tmp_path):
    path = _rows_with_a_hole(tmp_path)
    cfg = load_config(None, ["task_reader.type=dataset_file", f"task_reader.dataset_file.training.file_path={path}"])
    with pytest.raises(TaskReaderError) as info:
        build_task_reader(cfg).train_tasks()
    message = str(info.value)
    assert str(path) in message and "row 1" in message and "'answer'" in message
    assert "on_missing_field: skip" in message


def test_missing_field_skip_counts_and_warns(tmp_path, caplog):
    path = _rows_with_a_hole(tmp_path)
    cfg = load_config(
        None,
        [
            "task_reader.type=dataset_file",
            f"task_reader.dataset_file.training.file_path={path}",
            "task_reader.on_missing_field=skip",
            "data.shuffle=false",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="ajet.task_reader"):
        tasks = build_task_reader(cfg).train_tasks()
    assert [t.main_query for t in tasks] == ["q0", "q2"]
    assert [t.task_id for t in tasks] == ["train-0", "train-2"]  # ids keep the source row index
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 2 of 4 rows" in warning and "'answer'" in warning and "first at row 1" in warning


def test_unsupported_and_missing_files(tmp_path):
    odd = tmp_path / "tasks.txt"
    odd.write_text("x")
    cfg = load_config(None, ["task_reader.type=dataset_file", f"task_reader.dataset_file.training.file_path={odd}"])
    with pytest.raises(TaskReaderError, match="unsupported suffix '.txt'"):
        build_task_reader(cfg).train_tasks()
    cfg = load_config(
        None,
        ["task_reader.type=dataset_file", f"task_reader.dataset_file.training.file_path={tmp_path / 'absent.jsonl'}"],
    )
    with pytest.raises(TaskReaderError, match="training.file_path: file not found"):
        build_task_reader(cfg).train_tasks()


def test_reference_answer_forms():
    assert solution_final_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert solution_final_answer("first #### 1 then #### 2") == "2"
    assert solution_final_answer(" 42 ") == "42"
    assert solution_final_answer(17) == "17"
    # Only the line after the mark is the answer: the reader and the math judge read it alike.
    from ajet.judge.math import reference_answer

    solution = "so 2 + 3 = 5\n#### 5\n(checked twice)"
    assert solution_final_answer(solution) == "5" == reference_answer({"answer": solution})


# ------------------------------------------------------------------------------------ env_service


@pytest.fixture(scope="module")
def env_service():
    app = create_app(seed=0)
    with serve_in_thread(app) as base_url:
        yield base_url, app


def env_config(base_url):
    return load_config(
        None, ["task_reader.type=env_service", f"task_reader.env_service.env_url={base_url}", "data.shuffle=false"]
    )


@pytest.mark.network_loopback
def test_env_service_reader_lists_tasks_over_http(env_service):
    base_url, _ = env_service
    expected = make_tasks(seed=0)
    reader = build_task_reader(env_config(base_url))
    train, val = reader.train_tasks(), reader.val_tasks()
    assert [t.task_id for t in train] == [t.task_id for t in expected["train"]]
    assert [t.main_query for t in val] == [t.query for t in expected["dev"]]
    assert train[0].metadata["a"] == expected["train"][0].a
    assert train[0].metadata["env_service"]["env_url"] == base_url


@pytest.mark.network_loopback
async def test_episode_through_client_and_judge(env_service):
    base_url, app = env_service
    task = build_task_reader(env_config(base_url)).train_tasks()[0]
    answer = task.metadata["a"] + task.metadata["b"]
    workflow_task = WorkflowTask(task=task, episode_id="e1")
    env = bind_env(workflow_task)
    assert isinstance(env, EnvServiceClient) and workflow_task.env is env

    observation = await env.reset()
    assert observation == task.main_query
    wrong = await env.step(f"I think it is {answer - 1}")
    assert (wrong.reward, wrong.done, wrong.observation) == (0.0, False, "too low")
    right = await env.step(f"The answer is {answer}")
    assert (right.reward, right.done) == (1.0, True)

    judge = EnvServiceJudge(config=None)
    assert await judge.compute_reward(workflow_task, WorkflowOutput()) == (1.0, True)

    instance_id = env.instance_id
    assert instance_id in app.state.instances
    await env.close()
    assert instance_id not in app.state.instances
    await env.close()  # closing twice is harmless


@pytest.mark.network_loopback
async def test_unsolved_episode_scores_zero_and_client_pickles(env_service):
    base_url, _ = env_service
    task = build_task_reader(env_config(base_url)).train_tasks()[1]
    workflow_task = WorkflowTask(task=task)
    env = bind_env(workflow_task)
    async with env:
        await env.reset()
        await env.step("no idea")
        copy = pickle.loads(pickle.dumps(env))  # e.g. shipped to a Ray worker mid-episode
        assert copy.instance_id == env.instance_id
        assert (await copy.evaluate()).is_success is False
        assert await EnvServiceJudge().compute_reward(workflow_task, WorkflowOutput()) == (0.0, False)


@pytest.mark.network_loopback
async def test_env_service_errors_are_explicit(env_service):
    base_url, _ = env_service
    with pytest.raises(EnvServiceError, match="call `await env.reset\\(\\)` first"):
        await EnvServiceClient(base_url, "train-0").evaluate()
    with pytest.raises(EnvServiceError) as info:
        await EnvServiceClient(base_url, "no-such-task").reset()
    assert info.value.status_code == 404 and "unknown task_id" in str(info.value)
    with pytest.raises(EnvServiceError, match="needs workflow_task.env"):
        await EnvServiceJudge().compute_reward(
            WorkflowTask(task=build_task_reader(env_config(base_url)).train_tasks()[0]), WorkflowOutput()
        )

    bad_split = load_config(
        None,
        [
            "task_reader.type=env_service",
            f"task_reader.env_service.env_url={base_url}",
            "task_reader.env_service.training_split=holdout",
        ],
    )
    with pytest.raises(TaskReaderError) as info:
        build_task_reader(bad_split).train_tasks()
    assert "ajet.task_reader.env_service.env_url" in str(info.value) and "unknown split 'holdout'" in str(info.value)


@pytest.mark.network_loopback
def test_env_service_down_is_a_reader_error():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(TaskReaderError, match="ConnectError"):
        build_task_reader(env_config(f"http://127.0.0.1:{port}")).train_tasks()
