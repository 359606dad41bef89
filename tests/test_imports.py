"""`module->Name` and `file.py->Name` imports of user classes, and what their errors say."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from ajet.config import ConfigError
from ajet.imports import ImportSpecError, import_object
from ajet.judge.base import BaseJudge
from ajet.workflow import Workflow

WORKFLOW_SOURCE = """
from ajet.workflow import Workflow

TAG = {tag!r}

class MyAgent(Workflow):
    tag = TAG

def helper():
    return 1
"""


@pytest.fixture
def isolated_imports(monkeypatch, tmp_path):
    """A fresh cwd, with sys.path restored afterwards (module names are unique per test)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def unique_package(root: Path, tag: str) -> str:
    name = f"userpkg_{uuid.uuid4().hex[:8]}"
    write(root / name / "__init__.py", "")
    write(root / name / "agent.py", WORKFLOW_SOURCE.format(tag=tag))
    return name


def test_dot_import_resolves_from_the_working_directory(isolated_imports):
    package = unique_package(isolated_imports, "dotted")
    sys.path[:] = [p for p in sys.path if p not in ("", str(isolated_imports))]
    cls = import_object(f"{package}.agent->MyAgent", Workflow, key="ajet.rollout.user_workflow")
    assert issubclass(cls, Workflow) and cls.tag == "dotted"
    assert cls.__module__ == f"{package}.agent"


def test_path_import_absolute_and_relative(isolated_imports):
    file = write(isolated_imports / "agents" / "solo.py", WORKFLOW_SOURCE.format(tag="by-path"))
    absolute = import_object(f"{file}->MyAgent", Workflow)
    relative = import_object("agents/solo.py->MyAgent", Workflow)
    assert absolute.tag == "by-path"
    assert relative is absolute  # the same file is one module, loaded once
    assert import_object("agents/solo->MyAgent", Workflow) is absolute  # `.py` may be left out


def test_same_named_files_in_different_folders_do_not_collide(isolated_imports):
    first = write(isolated_imports / "a" / "agent.py", WORKFLOW_SOURCE.format(tag="from-a"))
    second = write(isolated_imports / "b" / "agent.py", WORKFLOW_SOURCE.format(tag="from-b"))
    cls_a = import_object(f"{first}->MyAgent", Workflow)
    cls_b = import_object(f"{second}->MyAgent", Workflow)
    assert (cls_a.tag, cls_b.tag) == ("from-a", "from-b")
    assert cls_a.__module__ != cls_b.__module__
    assert sys.modules[cls_a.__module__].__file__ == str(first.resolve())
    assert sys.modules[cls_b.__module__].__file__ == str(second.resolve())


def test_file_module_can_import_its_siblings(isolated_imports):
    write(isolated_imports / "proj" / "prompts_sibling_x.py", "SYSTEM = 'be brief'\n")
    file = write(
        isolated_imports / "proj" / "agent.py",
        """
        from ajet.workflow import Workflow
        from prompts_sibling_x import SYSTEM

        class MyAgent(Workflow):
            system = SYSTEM
    """,
    )
    assert import_object(f"{file}->MyAgent", Workflow).system == "be brief"


@pytest.mark.parametrize("spec", ["no_arrow_here", "a->b->c", "->Name", "pkg.mod->not-a-name", "pkg mod->Name"])
def test_bad_spec_form(spec):
    with pytest.raises(ImportSpecError) as info:
        import_object(spec, key="ajet.rollout.user_workflow")
    message = str(info.value)
    assert message.startswith(f"ajet.rollout.user_workflow = {spec!r}")
    assert "package.module->ClassName" in message
    assert isinstance(info.value, ConfigError)


def test_module_not_found_names_module_and_cwd(isolated_imports):
    with pytest.raises(ImportSpecError) as info:
        import_object("nowhere_pkg_zz.agent->MyAgent", key="ajet.rollout.user_workflow")
    message = str(info.value)
    assert "no module named 'nowhere_pkg_zz'" in message
    assert str(isolated_imports) in message
    assert "ajet.rollout.user_workflow" in message


def test_file_not_found_names_the_resolved_path(isolated_imports):
    with pytest.raises(ImportSpecError, match="file not found: .*missing_dir/agent.py"):
        import_object("missing_dir/agent.py->MyAgent", key="ajet.task_judge.judge_protocol")


def test_missing_name_lists_what_the_module_defines(isolated_imports):
    package = unique_package(isolated_imports, "x")
    with pytest.raises(ImportSpecError) as info:
        import_object(f"{package}.agent->MyAgnet")
    message = str(info.value)
    assert "has no name 'MyAgnet'" in message
    assert "MyAgent" in message and "helper" in message
    assert "Workflow" not in message.split("defines:")[1]  # imported, not defined there


def test_wrong_base_class_is_reported(isolated_imports):
    package = unique_package(isolated_imports, "x")
    with pytest.raises(ImportSpecError) as info:
        import_object(f"{package}.agent->MyAgent", BaseJudge, key="ajet.task_judge.judge_protocol")
    message = str(info.value)
    assert "not a subclass of ajet.judge.base.BaseJudge" in message
    assert "ajet.task_judge.judge_protocol" in message
    with pytest.raises(ImportSpecError, match="is a function, not a subclass"):
        import_object(f"{package}.agent->helper", Workflow)


def test_error_inside_user_module_keeps_its_traceback(isolated_imports):
    package = f"brokenpkg_{uuid.uuid4().hex[:8]}"
    write(isolated_imports / package / "__init__.py", "")
    write(
        isolated_imports / package / "agent.py",
        """
        from ajet.workflow import Workflow

        def build():
            return 1 / 0

        VALUE = build()
    """,
    )
    with pytest.raises(ImportSpecError) as info:
        import_object(f"{package}.agent->MyAgent", Workflow)
    message = str(info.value)
    assert "raised ZeroDivisionError" in message
    assert "Traceback" in message and "return 1 / 0" in message
    assert "no module named" not in message

    file = write(isolated_imports / "f" / "agent.py", "raise RuntimeError('boom at import')\n")
    with pytest.raises(ImportSpecError, match="raised RuntimeError: boom at import"):
        import_object(f"{file}->MyAgent")
    # A failed file import leaves no half-initialised module behind.
    assert not any(getattr(m, "__file__", None) == str(file.resolve()) for m in list(sys.modules.values()))


def test_missing_dependency_inside_user_module_is_not_reported_as_module_not_found(isolated_imports):
    package = f"deppkg_{uuid.uuid4().hex[:8]}"
    write(isolated_imports / package / "__init__.py", "")
    write(isolated_imports / package / "agent.py", "import some_uninstalled_dependency_qq\n")
    with pytest.raises(ImportSpecError) as info:
        import_object(f"{package}.agent->MyAgent")
    message = str(info.value)
    assert "raised ModuleNotFoundError" in message
    assert "some_uninstalled_dependency_qq" in message
    assert f"no module named '{package}" not in message
