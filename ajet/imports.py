"""Loading user classes named in the config: `pkg.mod->Name` or `path/to/file.py->Name`.

    import_object("tutorial.example_math_agent.math_agent->ExampleMathLearn", Workflow,
                  key="ajet.rollout.user_workflow")

Dot specs import a module the normal way, with the working directory first on sys.path (as a
script run from there would). File specs load the file under a module name derived from its
resolved path, so two `agent.py` files in different folders are two modules, and loading one file
twice gives the same module (and the same class objects) back.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from ajet.config.errors import ConfigError

SEPARATOR = "->"
FILE_MODULE_PREFIX = "_ajet_file_"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ImportSpecError(ConfigError):
    """A `module->Name` or `file.py->Name` spec that cannot be loaded; the message says which step failed."""


def import_object(spec: str, base_class: type | None = None, key: str = "") -> Any:
    """Load the object a spec names; with `base_class`, it must be a subclass of it.

    key: the config key the spec came from (e.g. `ajet.rollout.user_workflow`), named in errors.
    Raises ImportSpecError for a malformed spec, a module or file that is not there, a missing name
    or a class of the wrong kind. An exception raised while the user's module runs is reported with
    its traceback.
    """
    where = f"{key} = {spec!r}" if key else repr(spec)
    source, name = _split(spec, where, key)
    if _is_file_spec(source):
        module = _load_file(source, where, key)
    else:
        module = _load_module(source, where, key)

    if not hasattr(module, name):
        public = _public_names(module)
        raise ImportSpecError(
            f"{where}: {_module_label(module)} has no name {name!r}; it defines: "
            f"{', '.join(public) if public else '(no public names)'}",
            key=key,
            value=spec,
        )
    obj = getattr(module, name)
    if base_class is not None and not (inspect.isclass(obj) and issubclass(obj, base_class)):
        kind = f"class {obj.__module__}.{obj.__qualname__}" if inspect.isclass(obj) else type(obj).__name__
        raise ImportSpecError(
            f"{where}: {name} is a {kind}, not a subclass of {base_class.__module__}.{base_class.__qualname__}; "
            f"declare it as `class {name}({base_class.__qualname__}): ...`",
            key=key,
            value=spec,
        )
    return obj


def _module_label(module: ModuleType) -> str:
    file = getattr(module, "__file__", None)
    return f"{file}" if module.__name__.startswith(FILE_MODULE_PREFIX) and file else f"module {module.__name__!r}"


def _split(spec: Any, where: str, key: str) -> tuple[str, str]:
    form = "`package.module->ClassName` or `path/to/file.py->ClassName`"
    if not isinstance(spec, str) or spec.count(SEPARATOR) != 1:
        raise ImportSpecError(f"{where}: expected {form} (exactly one `->`)", key=key, value=spec)
    source, name = (part.strip() for part in spec.split(SEPARATOR))
    if not source or not name.isidentifier():
        problem = "the module part is empty" if not source else f"{name!r} is not a Python name"
        raise ImportSpecError(
            f"{where}: expected {form}; {problem}",
            key=key,
            value=spec,
        )
    if not _is_file_spec(source) and not _DOTTED.match(source):
        raise ImportSpecError(
            f"{where}: {source!r} is neither a dotted module name nor a path ending in .py; expected {form}",
            key=key,
            value=spec,
        )
    return source, name


def _is_file_spec(source: str) -> bool:
    return source.endswith(".py") or "/" in source or os.sep in source


def _load_module(dotted: str, where: str, key: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        # Only a missing module on the spec's own path is "not found"; a missing import inside the
        # user's module is an error in that module and keeps its traceback.
        missing = exc.name or ""
        if dotted == missing or dotted.startswith(missing + "."):
            raise ImportSpecError(
                f"{where}: no module named {missing!r} (searched the working directory {cwd} and sys.path); "
                f"check the spelling, or use a file path spec such as `path/to/{dotted.rsplit('.', 1)[-1]}.py->Name`",
                key=key,
                value=dotted,
            ) from None
        raise _raised_inside(where, key, dotted, exc) from exc
    except Exception as exc:  # noqa: BLE001 - any error in user code is reported, with its traceback
        raise _raised_inside(where, key, dotted, exc) from exc


def _load_file(source: str, where: str, key: str) -> ModuleType:
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    path = path.resolve()
    if not path.suffix and path.with_suffix(".py").is_file():
        path = path.with_suffix(".py")  # `dir/agent->Name` written for `dir/agent.py->Name`
    if not path.is_file():
        raise ImportSpecError(f"{where}: file not found: {path}", key=key, value=source)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"{FILE_MODULE_PREFIX}{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]

    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportSpecError(f"{where}: cannot load {path} as a Python module", key=key, value=source)
    module = importlib.util.module_from_spec(spec)
    # Registered before running so dataclasses, pickling and self-imports inside it find the module.
    sys.modules[module_name] = module
    # The file's folder goes last on sys.path so its sibling imports work without shadowing packages.
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[module_name]
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _raised_inside(where, key, str(path), exc) from exc
    return module


def _raised_inside(where: str, key: str, what: str, exc: BaseException) -> ImportSpecError:
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    return ImportSpecError(
        f"{where}: importing {what} raised {type(exc).__name__}: {exc}\n{trace}", key=key, value=what
    )


def _public_names(module: ModuleType) -> list[str]:
    """Names the module itself defines (not those it imported), public ones only."""
    own = []
    for attr, value in vars(module).items():
        if attr.startswith("_"):
            continue
        if getattr(value, "__module__", None) == module.__name__:
            own.append(attr)
    return sorted(own)
