"""The `ajet` command: dry run, run directory, config errors, --kill, the console script, and the
dataset download script's offline failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from pkgutil import resolve_name

import datasets
import psutil
import pytest
import tomllib
import yaml

from ajet import __version__
from ajet.backbone import LaunchOptions
from ajet.config import load_config
from ajet.imports import import_object
from ajet.launcher import RUN_CONFIG_FILE, main
from ajet.processes import RUN_ID_ENV, is_ajet_entry, kill_run_processes

REPO = Path(__file__).resolve().parents[1]

USER_CLASSES = """
from ajet.judge.base import BaseJudge
from ajet.workflow import Workflow


class TinyWorkflow(Workflow):
    async def execute(self, workflow_task, tuner):
        raise NotImplementedError


class TinyJudge(BaseJudge):
    def compute_reward(self, workflow_task, workflow_output):
        return 1.0, True
"""


@pytest.fixture
def project(tmp_path, monkeypatch, gsm8k_dir):
    """A user project dir: a workflow module importable from the cwd, a judge file, a seed-form YAML."""
    package = f"tinyagent_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "agent.py").write_text(USER_CLASSES)
    (tmp_path / "judges").mkdir()
    (tmp_path / "judges" / "judge.py").write_text(USER_CLASSES)
    conf = tmp_path / "math_agent.yaml"
    conf.write_text(
        textwrap.dedent(f"""
        ajet:
          task_reader:
            type: huggingface_dat_repo   # also supports: dataset_file / env_service
            huggingface_dat_repo:
              dataset_path: {gsm8k_dir}
              training_split: test

          rollout:
            user_workflow: {package}.agent->TinyWorkflow

          task_judge:
            judge_protocol: judges/judge.py->TinyJudge

          model:
            path: builtin:smollm2-135m-instruct
    """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path, conf, package


def first_question(gsm8k_dir: Path) -> str:
    with open(gsm8k_dir / "test.jsonl", encoding="utf-8") as f:
        return json.loads(f.readline())["question"]


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, module: str = "ajet.launcher"
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=str(cwd), env=full_env, capture_output=True, text=True, timeout=180
    )


# ----------------------------------------------------------------------------------- dry run


def test_dry_run_prints_config_classes_and_first_gsm8k_question(project, gsm8k_dir):
    root, conf, package = project
    out = run_cli("--conf", str(conf), "--dry-run", "data.shuffle=false", "rollout.num_repeat=2", cwd=root)
    assert out.returncode == 0, out.stderr
    printed_yaml = out.stdout.split("# workflow:")[0]
    effective = yaml.safe_load(printed_yaml)["ajet"]
    assert effective["rollout"]["num_repeat"] == 2
    assert effective["task_reader"]["huggingface_dat_repo"]["dataset_path"] == str(gsm8k_dir)
    assert f"# workflow: {package}.agent.TinyWorkflow" in out.stdout
    assert "TinyJudge" in out.stdout and str(root / "judges" / "judge.py") in out.stdout
    assert first_question(gsm8k_dir) in out.stdout
    assert not (root / "runs").exists()  # a dry run creates no run directory


def test_python_dash_m_ajet_is_the_same_command(tmp_path):
    out = run_cli("--version", cwd=tmp_path, module="ajet")
    assert out.returncode == 0 and out.stdout.strip() == f"ajet {__version__}"


def test_console_script_entry_point_is_the_launcher(capsys):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entry = resolve_name(scripts["ajet"])
    assert entry is main
    with pytest.raises(SystemExit) as info:
        entry(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out


# ----------------------------------------------------------------------------------- real run


def test_run_creates_experiment_dir_writes_config_and_calls_backbone(project, monkeypatch):
    root, conf, _ = project
    calls = []

    def fake_backbone_run(cfg, options):
        calls.append((cfg, options))
        return 0

    monkeypatch.setattr("ajet.backbone.run", fake_backbone_run)
    code = main(["--conf", str(conf), "--backbone", "debug", "--with-logview", "experiment_name=unit"])
    assert code == 0 and len(calls) == 1
    cfg, options = calls[0]
    assert isinstance(options, LaunchOptions)
    assert options.with_logview is True and options.with_ray is False
    assert options.backbone == "debug" and cfg.backbone == "debug"

    run_dir = Path(cfg.trainer_common.experiment_dir)
    assert options.run_dir == run_dir
    assert run_dir.parent == root / "runs" and run_dir.name.startswith("unit-")
    saved = load_config(run_dir / RUN_CONFIG_FILE)
    assert saved.to_dict() == cfg.to_dict()  # the saved file is the effective config


def test_config_error_raised_inside_the_backbone_is_reported_cleanly(project, monkeypatch, capsys):
    root, conf, _ = project
    from ajet.task_reader import TaskReaderError

    def backbone_with_missing_file(cfg, options):
        raise TaskReaderError("ajet.task_reader.dataset_file.training.file_path: file not found: /x.jsonl")

    monkeypatch.setattr("ajet.backbone.run", backbone_with_missing_file)
    assert main(["--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert "file not found: /x.jsonl" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------- config errors


def test_config_errors_print_one_clean_message_and_exit_2(project, capsys):
    root, conf, package = project
    cases = {
        ("rollout.num_repaet=4",): "did you mean `ajet.rollout.num_repeat`?",
        ("rollout.num_repeat=many",): "`ajet.rollout.num_repeat` = 'many'",
        ("model.path=YOUR_MODEL_PATH",): "placeholder",
        (f"rollout.user_workflow={package}.agent->Missing",): "ajet.rollout.user_workflow",
        ("task_judge.judge_protocol=judges/judge.py->TinyWorkflow",): "not a subclass of ajet.judge.base.BaseJudge",
        ("rollout.user_workflow=nonexistent_mod_q.agent->X",): "no module named 'nonexistent_mod_q'",
        # Values the debug backbone cannot honour stop the run, naming the key and what it may be.
        ("trainer_common.algorithm.adv_estimator=no_such_x",): "adv_estimator = 'no_such_x': no advantage "
        "estimator 'no_such_x'; registered: ",
        ("rollout.tensor_model_parallel_size=2",): "ajet.rollout.tensor_model_parallel_size = 2: the debug "
        "backbone runs in one process on one device, so it must be 1",
        ("trainer_common.nnodes=2",): "ajet.trainer_common.nnodes = 2",
        ("trainer_common.n_gpus_per_node=4",): "must be 0 or 1",
    }
    for overrides, expected in cases.items():
        code = main(["--conf", str(conf), "--dry-run", *overrides])
        err = capsys.readouterr().err
        assert code == 2, overrides
        assert err.startswith("ajet: config error:") and expected in err, err
        assert "Traceback" not in err
    assert not (root / "runs").exists()
    # The same values are the verl backbone's to honour (or refuse) there.
    assert main(["--conf", str(conf), "--dry-run", "--backbone", "verl", "trainer_common.nnodes=2"]) == 0


def test_config_error_exit_status_from_the_command_line(project):
    root, conf, _ = project
    out = run_cli("--conf", str(conf), "rollout.temperature=hot", cwd=root)
    assert out.returncode == 2
    assert "`ajet.rollout.temperature` = 'hot'" in out.stderr and "Traceback" not in out.stderr


# ----------------------------------------------------------------------------------------- --kill


def _sleeper(*marker_args: str, env: dict | None = None, executable: str | None = None, cwd=None) -> subprocess.Popen:
    # The test process may carry a run mark of its own (an in-process `main()` run marks it).
    clean = {k: v for k, v in os.environ.items() if k != RUN_ID_ENV}
    return subprocess.Popen(
        [executable or sys.executable, "-c", "import time; time.sleep(120)", *marker_args],
        env={**clean, **(env or {})}, cwd=cwd,
    )


def _wait_gone(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_kill_ends_only_processes_of_ajet_runs(capsys, tmp_path):
    token = f"killtest{uuid.uuid4().hex[:10]}"
    # A process of a run: it carries the mark the launcher gives everything it starts.
    marked = _sleeper(f"worker-{token}", env={RUN_ID_ENV: "run-1"})
    # A child that scrubbed its environment (as the Python tool's sandbox does) of a marked parent.
    spawner = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{k: v for k, v in os.environ.items() if k != {RUN_ID_ENV!r}}}
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "tool-{token}"], env=env)
        time.sleep(120)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", spawner, f"parent-{token}"],
        env={**{k: v for k, v in os.environ.items() if k != RUN_ID_ENV}, RUN_ID_ENV: "run-1"},
    )
    # Not in a run, though "ajet" is everywhere around it: its interpreter lies in a virtualenv
    # folder named after ajet, it runs from a folder named ajet-notes and its arguments say ajet.
    venv_bin = tmp_path / "ajet-py3.11-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    notes = tmp_path / "ajet-notes"
    notes.mkdir()
    unrelated = _sleeper(f"ajet-{token}", executable=str(venv_bin / "python"), cwd=notes)
    try:
        time.sleep(1.0)
        child = next(p for p in psutil.Process(parent.pid).children() if f"tool-{token}" in " ".join(p.cmdline()))
        ended = kill_run_processes(f"{token}|nothing-else-{token}")
        out = capsys.readouterr().out
        assert sorted(ended) == sorted([marked.pid, parent.pid, child.pid])
        assert f"ended {marked.pid}:" in out and f"worker-{token}" in out
        assert _wait_gone(marked) and _wait_gone(parent)
        assert unrelated.poll() is None  # still running
    finally:
        for proc in (marked, parent, unrelated):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


def test_the_launcher_is_recognised_by_its_command_line():
    assert is_ajet_entry(["/venv/bin/ajet", "--conf", "x.yaml"])
    assert is_ajet_entry(["/venv/bin/python3.11", "/venv/bin/ajet", "--kill", "ray"])
    assert is_ajet_entry(["python", "-m", "ajet.launcher", "--conf", "x.yaml"])
    assert is_ajet_entry(["python", "-m", "ajet"])
    assert not is_ajet_entry(["/home/u/ajet-venv/bin/python", "-c", "import time"])
    assert not is_ajet_entry(["python", "/home/u/ajet-notes/plot.py"])
    assert not is_ajet_entry(["python", "-m", "ajet_tools"])


def test_kill_spares_itself_and_its_parents_and_reports_no_match(tmp_path):
    token = f"killself{uuid.uuid4().hex[:10]}"
    # Both the launcher and the process that started it have command lines matching the pattern and
    # containing "ajet": neither may be ended.
    launcher = f"from ajet.launcher import main; raise SystemExit(main(['--kill', '{token}']))"
    parent = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {launcher!r}]))"
    out = subprocess.run(
        [sys.executable, "-c", parent, f"ajet-{token}"],
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "no process" in out.stdout and "matched" in out.stdout


# ----------------------------------------------------------------------------- download script


@pytest.mark.network_loopback
def test_download_script_offline_fails_in_one_line(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "download_dataset.py"),
            "--target=openai/gsm8k",
            f"--path={tmp_path / 'd'}",
        ],
        env={**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "unreachable" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "ajet.task_reader.huggingface_dat_repo.dataset_path" in lines[0]
    assert not (tmp_path / "d").exists()


def test_download_script_writes_what_the_reader_reads(tmp_path, monkeypatch):
    script_main = import_object(f"{REPO / 'scripts' / 'download_dataset.py'}->main")
    module = sys.modules[script_main.__module__]
    fake_hub = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"question": "q1", "answer": "a\n#### 1,200"}]),
            "test": datasets.Dataset.from_list([{"question": "t1", "answer": "#### 5"}]),
        }
    )
    requested = []
    monkeypatch.setattr(module, "hub_unreachable", lambda endpoint: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda target, name: requested.append((target, name)) or fake_hub)

    assert script_main(["--target=openai/gsm8k", f"--path={tmp_path / 'gsm8k'}"]) == 0
    assert requested == [("openai/gsm8k", "main")]  # gsm8k needs its config name
    monkeypatch.undo()

    cfg = load_config(None, [f"task_reader.huggingface_dat_repo.dataset_path={tmp_path / 'gsm8k'}"])
    from ajet.task_reader import build_task_reader

    reader = build_task_reader(cfg)
    assert [t.metadata["reference_answer"] for t in reader.train_tasks()] == ["1200"]
    assert [t.main_query for t in reader.val_tasks()] == ["t1"]
