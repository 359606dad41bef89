"""Config loading: merge order, overrides, validation messages, AgentJet YAMLs, the run directory."""

from __future__ import annotations

import logging
import pickle
import re
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from ajet.config import DEFAULT_CONFIG_PATH, AjetConfig, ConfigError, load_config, resolve_experiment_dir
from ajet.imports import import_object
from ajet.judge.base import BaseJudge
from ajet.judge.env_service import EnvServiceJudge

DATA = Path(__file__).parent / "data"
SEED_YAML = DATA / "config_seed_math_agent.yaml"
AGENTJET_YAML = DATA / "config_agentjet_style.yaml"


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def packaged_defaults() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())["ajet"]


# ----------------------------------------------------------------------------------- merge order


def test_defaults_alone_give_the_packaged_values():
    cfg = load_config(None)
    defaults = packaged_defaults()
    assert isinstance(cfg, AjetConfig)
    assert cfg.rollout.num_repeat == defaults["rollout"]["num_repeat"]
    assert cfg.trainer_common.optim.lr == defaults["trainer_common"]["optim"]["lr"]
    assert (
        cfg.task_reader.huggingface_dat_repo.dataset_path
        == defaults["task_reader"]["huggingface_dat_repo"]["dataset_path"]
    )
    # Every default key comes back out of the effective config (async included, under its YAML name).
    assert set(cfg.to_dict()) >= set(defaults)
    assert set(cfg.to_dict()["trainer_common"]) >= set(defaults["trainer_common"])


def test_yaml_overrides_defaults_and_command_line_overrides_yaml(tmp_path):
    conf = write_yaml(
        tmp_path / "exp.yaml",
        """
ajet:
  experiment_name: mine
  rollout:
    num_repeat: 8
    temperature: 0.5
  data:
    seed: 7
""",
    )
    cfg = load_config(conf, ["rollout.num_repeat=3", "ajet.data.seed=11"])
    assert cfg.rollout.num_repeat == 3  # command line beats YAML
    assert cfg.data.seed == 11  # `ajet.` prefix accepted
    assert cfg.rollout.temperature == 0.5  # YAML beats default
    assert cfg.experiment_name == "mine"
    # A sibling the YAML did not mention keeps its default: the merge is deep, not per section.
    assert cfg.rollout.top_p == packaged_defaults()["rollout"]["top_p"]


def test_override_values_are_parsed_as_yaml_scalars():
    cfg = load_config(
        None,
        [
            "data.shuffle=false",
            "trainer_common.optim.lr=1e-5",
            "debug.debug_first_n_tasks=5",
            "trainer_common.logger=[console, jsonl]",
            "trainer_common.total_training_steps=null",
            "task_reader.id_field=uid",
        ],
    )
    assert cfg.data.shuffle is False
    assert cfg.trainer_common.optim.lr == pytest.approx(1e-5)
    assert cfg.debug.debug_first_n_tasks == 5
    assert cfg.trainer_common.logger == ["console", "jsonl"]
    assert cfg.trainer_common.total_training_steps is None
    assert cfg.task_reader.id_field == "uid"


def test_backbone_argument_wins_over_yaml(tmp_path):
    conf = write_yaml(tmp_path / "exp.yaml", "ajet:\n  backbone: verl\n")
    assert load_config(conf).backbone == "verl"
    assert load_config(conf, backbone="debug").backbone == "debug"


def test_effective_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["rollout.num_repeat=6", "trainer_common.async.max_staleness=2", "verl.actor.x=1"])
    saved = write_yaml(tmp_path / "config.yaml", cfg.to_yaml())
    again = load_config(saved)
    assert again.to_dict() == cfg.to_dict()
    assert again.trainer_common.async_.max_staleness == 2
    assert yaml.safe_load(saved.read_text())["ajet"]["trainer_common"]["async"]["max_staleness"] == 2


def test_task_judge_keeps_extra_keys_and_verl_passes_through(tmp_path):
    conf = write_yaml(
        tmp_path / "exp.yaml",
        """
ajet:
  task_judge:
    my_threshold: 0.25
    rubric: {style: strict}
  verl:
    actor_rollout_ref:
      rollout: {gpu_memory_utilization: 0.7}
""",
    )
    cfg = load_config(conf)
    assert cfg.task_judge.my_threshold == 0.25
    assert cfg.task_judge.rubric == {"style": "strict"}
    assert cfg.verl["actor_rollout_ref"]["rollout"]["gpu_memory_utilization"] == 0.7


def test_jsonl_dataset_file_is_an_alias_of_dataset_file(tmp_path):
    conf = write_yaml(
        tmp_path / "exp.yaml",
        """
ajet:
  task_reader:
    type: jsonl_dataset_file
    jsonl_dataset_file:
      training: {file_path: /data/train.jsonl}
""",
    )
    cfg = load_config(conf)
    assert cfg.task_reader.type == "dataset_file"
    assert cfg.task_reader.dataset_file.training.file_path == "/data/train.jsonl"
    assert cfg.task_reader.dataset_file.validation.file_path is None


# ------------------------------------------------------------------------------ error messages


def error_of(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return info.value


def test_unknown_key_names_the_path_and_suggests_the_sibling(tmp_path):
    conf = write_yaml(tmp_path / "exp.yaml", "ajet:\n  rollout:\n    num_repaet: 4\n")
    err = error_of(conf)
    assert "unknown key `ajet.rollout.num_repaet`" in str(err)
    assert "did you mean `ajet.rollout.num_repeat`?" in str(err)
    assert err.key == "ajet.rollout.num_repaet"


def test_unknown_key_in_the_wrong_section_suggests_where_it_lives():
    err = error_of(None, ["trainer_common.lr=1e-6"])
    assert "did you mean `ajet.trainer_common.optim.lr`?" in str(err)


def test_unknown_key_without_a_near_match_lists_the_valid_keys():
    err = error_of(None, ["rollout.zzzz=1"])
    assert "unknown key `ajet.rollout.zzzz`" in str(err)
    assert "num_repeat" in str(err) and "did you mean" not in str(err)


def test_wrong_type_names_key_value_and_expected_form():
    err = error_of(None, ["rollout.num_repeat=four"])
    assert "`ajet.rollout.num_repeat` = 'four'" in str(err)
    assert "integer" in str(err)
    assert err.key == "ajet.rollout.num_repeat" and err.value == "four"


def test_out_of_range_and_choice_errors_say_what_is_allowed():
    assert "greater than 0" in str(error_of(None, ["rollout.num_repeat=0"]))
    err = error_of(None, ["rollout.engine=vlm"])
    assert "`ajet.rollout.engine` = 'vlm'" in str(err) and "'hf' or 'vllm'" in str(err)


def test_required_value_set_to_null_is_reported_as_required():
    err = error_of(None, ["model.path=null"])
    assert "`ajet.model.path` is required" in str(err)


def test_selected_reader_without_its_file_is_reported_with_the_key_to_set():
    err = error_of(None, ["task_reader.type=dataset_file"])
    assert "ajet.task_reader.dataset_file.training.file_path is required" in str(err)


def test_all_mistakes_are_reported_at_once(tmp_path):
    conf = write_yaml(tmp_path / "exp.yaml", "ajet:\n  rollout:\n    num_repaet: 4\n    temperature: hot\n")
    message = str(error_of(conf))
    assert "ajet.rollout.num_repaet" in message and "`ajet.rollout.temperature` = 'hot'" in message


def test_malformed_override_and_yaml_are_config_errors(tmp_path):
    assert "key.path=value" in str(error_of(None, ["rollout.num_repeat"]))
    nested = str(error_of(None, ["rollout.num_repeat.x=1"]))
    assert "`ajet.rollout.num_repeat` = {'x': 1}" in nested and "integer" in nested
    broken = write_yaml(tmp_path / "broken.yaml", "ajet:\n  rollout: [unclosed\n")
    assert "broken.yaml is not valid YAML" in str(error_of(broken))
    assert "config file not found" in str(error_of(tmp_path / "absent.yaml"))


# --------------------------------------------------------------------------------- the tutorial


def test_seed_yaml_placeholder_says_what_to_put_there():
    err = error_of(SEED_YAML)
    message = str(err)
    assert "ajet.model.path" in message and "YOUR_MODEL_PATH" in message
    assert "builtin:smollm2-135m-instruct" in message and "hub id" in message
    assert "\n" not in message  # the only mistake, so one line


def test_seed_yaml_loads_once_the_model_is_set():
    cfg = load_config(SEED_YAML, ["model.path=builtin:smollm2-135m-instruct"])
    seed = yaml.safe_load(SEED_YAML.read_text())["ajet"]
    assert cfg.rollout.user_workflow == seed["rollout"]["user_workflow"]
    assert cfg.task_judge.judge_protocol == seed["task_judge"]["judge_protocol"]
    assert cfg.task_reader.type == "huggingface_dat_repo"


def test_sections_at_top_level_are_told_to_indent(tmp_path):
    # The tutorial page, copied from HTML, loses the indentation under `ajet:`.
    flat = write_yaml(
        tmp_path / "flat.yaml", "ajet:\ntask_reader:\n    type: huggingface_dat_repo\nmodel:\n    path: x\n"
    )
    assert "must be indented under `ajet:`" in str(error_of(flat))


def test_misspelt_root_key_is_an_error(tmp_path):
    typo = write_yaml(tmp_path / "typo.yaml", "ajte:\n  rollout: {num_repeat: 2}\n")
    assert "did you mean `ajet:`" in str(error_of(typo))


# ------------------------------------------------------------------------------------ AgentJet


def test_agentjet_yaml_loads_with_one_warning_listing_ignored_keys(caplog):
    with caplog.at_level(logging.INFO, logger="ajet.config"):
        cfg = load_config(AGENTJET_YAML)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for key in (
        "ajet.rollout.compute_madness_checklist",
        "ajet.context_tracker",
        "ajet.task_runner",
        "ajet.enable_swarm_mode",
        "ajet.interchange_server",
        "ajet.trainer_common.fsdp_config",
        "ajet.rollout.multi_turn.expected_steps",
    ):
        assert key in warnings[0]
    # AgentJet keys ajet has adopted since (they are in default.yaml) take effect instead.
    assert "ajet.trainer_common.n_gpus_per_node" not in warnings[0]
    assert cfg.trainer_common.n_gpus_per_node == 8
    assert cfg.rollout.gpu_memory_utilization == 0.85
    infos = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert "`hydra:`" in infos and "`defaults:`" in infos

    # Keys AgentJet shares with us keep their meaning; renamed and reshaped ones are translated.
    assert cfg.rollout.multi_turn.max_steps == 30
    assert cfg.trainer_common.experiment_dir == "./saved_experiments/moved_over"
    assert cfg.trainer_common.logger == ["swanlab"]
    assert cfg.trainer_common.optim.lr_warmup_steps == 0
    assert cfg.task_reader.type == "dataset_file"
    assert cfg.task_reader.dataset_file.training.file_path == "/path/to/training/data.jsonl"
    assert cfg.task_judge.alien_llm_model == "qwen3-235b-a22b-instruct-2507"  # kept for user judges
    # AgentJet's built-in env-service judge is ours under its new module.
    assert import_object(cfg.task_judge.judge_protocol, BaseJudge) is EnvServiceJudge


def test_agentjet_names_are_not_accepted_outside_their_place():
    # `gamma` is ignored only under rollout; elsewhere it is an ordinary unknown key.
    assert "unknown key `ajet.data.gamma`" in str(error_of(None, ["data.gamma=1.0"]))


# --------------------------------------------------------------------------- schema and defaults


def test_every_default_key_has_a_typed_field():
    """default.yaml and ajet/config/schema.py describe the same keys (the schema forbids others)."""
    untyped = []

    def walk(model, defaults, prefix):
        fields = {(f.alias or name): f for name, f in model.model_fields.items()}
        for key, value in defaults.items():
            if key not in fields:
                untyped.append(prefix + key)
                continue
            sub = fields[key].annotation
            if (
                isinstance(value, dict)
                and isinstance(sub, type)
                and issubclass(sub, BaseModel)
                and sub.model_config.get("extra") != "allow"
            ):
                walk(sub, value, f"{prefix}{key}.")

    walk(AjetConfig, packaged_defaults(), "ajet.")
    assert not untyped, f"default.yaml keys without a field in ajet/config/schema.py: {untyped}"


def test_config_pickles_as_data():
    cfg = load_config(None, ["rollout.num_repeat=5", "task_judge.extra_knob=1"])
    again = pickle.loads(pickle.dumps(cfg))
    assert again.to_dict() == cfg.to_dict() and again.task_judge.extra_knob == 1


def test_every_default_key_is_documented_by_a_comment():
    """Each key line in default.yaml carries a comment, inline or on a comment line right above it,
    or sits in a block whose header line is commented (for self-explanatory children)."""
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of enclosing blocks
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w-]*):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = lines[number - 1].strip() if number else ""
        documented = "#" in match.group(3) or previous.startswith("#")
        inherited = bool(stack) and stack[-1][1]
        if not (documented or inherited):
            undocumented.append(f"line {number + 1}: {line.strip()}")
        # The root `ajet:` is introduced by the file's header comment; that documents no key below it.
        stack.append((indent, indent > 0 and (documented or inherited)))
    assert not undocumented, "keys without a comment in default.yaml:\n" + "\n".join(undocumented)


# ------------------------------------------------------------------------------ experiment dir


def test_auto_experiment_dir_is_named_after_experiment_and_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["experiment_name=gsm8k_try"])
    path = resolve_experiment_dir(cfg, now=datetime(2026, 1, 2, 3, 4, 5))
    assert path == tmp_path / "runs" / "gsm8k_try-20260102-030405"
    assert cfg.trainer_common.experiment_dir == str(path)  # written back: later callers agree
    assert resolve_experiment_dir(cfg) == path
    assert not path.exists()  # resolving never creates it


def test_explicit_experiment_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["trainer_common.experiment_dir=out/run1"])
    assert resolve_experiment_dir(cfg) == tmp_path / "out" / "run1"
