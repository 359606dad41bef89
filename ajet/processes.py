"""Which processes belong to an ajet run, and ending them (`ajet --kill`).

A run marks itself: the launcher puts `AJET_RUN_ID` into its environment before it starts anything,
so every process it starts (Ray's raylet and workers, vLLM's engine cores, verl's workers) inherits
the mark; the verl backbone also hands it to Ray's runtime environment for workers on other nodes.
The launcher process itself is recognised by its command line (`ajet ...` or `python -m ajet`), and
a process with a scrubbed environment (the Python tool's sandbox) by a marked ancestor. Nothing is
judged by a word appearing somewhere in a command line: a virtualenv or a folder named after ajet
marks nothing.

A run that is told to stop (SIGTERM from a scheduler, or from `ajet --kill`) takes the path of
Ctrl-C inside `sigterm_as_interrupt()`: the training loop saves its last finished step and Ray is
shut down, instead of the process dying with everything since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import PurePath
from types import FrameType

import psutil

RUN_ID_ENV = "AJET_RUN_ID"
_ENTRY_MODULES = ("ajet", "ajet.launcher")


def mark_this_run(run_id: str | None = None) -> str:
    """Give this process (and so everything it starts from now on) the run mark; returns the run id.

    An id already in the environment (a run started by another ajet process) is kept.
    """
    run_id = os.environ.get(RUN_ID_ENV) or run_id or uuid.uuid4().hex[:12]
    os.environ[RUN_ID_ENV] = run_id
    return run_id


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises KeyboardInterrupt, so it ends the run the way Ctrl-C does.

    Off the main thread Python cannot install signal handlers; there the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_ajet_entry(cmdline: list[str]) -> bool:
    """Whether a command line starts the ajet launcher: the `ajet` console script (alone or after a
    Python interpreter) or `python -m ajet` / `python -m ajet.launcher`."""
    if not cmdline:
        return False
    if PurePath(cmdline[0]).name == "ajet":
        return True
    if not PurePath(cmdline[0]).name.startswith("python") or len(cmdline) < 2:
        return False
    if PurePath(cmdline[1]).name == "ajet":
        return True
    return len(cmdline) >= 3 and cmdline[1] == "-m" and cmdline[2] in _ENTRY_MODULES


def carries_run_mark(proc: psutil.Process) -> bool:
    """The process is an ajet launcher or has the run mark in its environment."""
    try:
        if is_ajet_entry(proc.cmdline()):
            return True
        return RUN_ID_ENV in proc.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def in_an_ajet_run(proc: psutil.Process) -> bool:
    """Marked itself, or started (directly or not) by a marked process."""
    if carries_run_mark(proc):
        return True
    try:
        return any(carries_run_mark(parent) for parent in proc.parents())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def kill_run_processes(pattern: str) -> list[int]:
    """End this user's processes of ajet runs whose command line contains one of the `|`-separated
    words; never this process or its ancestors. Returns the pids ended."""
    words = [word.strip() for word in pattern.split("|") if word.strip()]
    me = psutil.Process()
    spared = {me.pid, *(parent.pid for parent in me.parents())}
    user = me.username()

    victims = []
    for proc in psutil.process_iter(["pid", "username", "cmdline"]):
        info = proc.info
        if info["pid"] in spared or info["username"] != user or not info["cmdline"]:
            continue
        cmdline = " ".join(info["cmdline"])
        if any(word in cmdline for word in words) and in_an_ajet_run(proc):
            victims.append((proc, cmdline))

    if not victims:
        print(f"ajet --kill: no process of user {user} matched {pattern!r} in an ajet run")
        return []
    for proc, cmdline in victims:
        try:
            proc.terminate()
            print(f"ajet --kill: ended {proc.pid}: {cmdline}")
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs([proc for proc, _ in victims], timeout=5)
    for proc in alive:
        try:
            proc.kill()
            print(f"ajet --kill: killed {proc.pid} (did not exit on SIGTERM)")
        except psutil.NoSuchProcess:
            pass
    return [proc.pid for proc, _ in victims]
