"""Runs one untrusted snippet inside the sandbox. Executed as `python -I _sandbox_runner.py '<json>'`.

This file is a standalone script (stdlib only, no ajet imports): `-I` keeps the parent's environment,
user site-packages and the script's own directory off sys.path.

The runner forks once. The forked worker locks itself down and runs `main.py` from the working
directory; the runner waits for it, reaping any other child meanwhile (it is pid 1 when the executor
started it in a new pid namespace, so orphans are reparented to it), and exits with the worker's
status (128 + signal number when the worker was killed by a signal). When the runner is pid 1 its
exit tears the namespace down and the kernel kills whatever the snippet left running.

Lock-down steps in the worker, each requested by the parent in the JSON config:
- rlimits: address space, CPU seconds, file size, open files, no core dumps, and RLIMIT_NPROC (which
  the kernel does not enforce for root, hence the seccomp filter below).
- seccomp: fork/vfork/clone-without-CLONE_THREAD fail with EAGAIN, so the snippet can use threads but
  cannot start processes: this is what stops a fork bomb when running as root. clone3 returns ENOSYS
  so glibc falls back to clone, whose flags a seccomp filter can inspect.
- Landlock: writes, creations, removals anywhere but the working directory (and /dev/null) fail;
  TCP connect/bind fail (ABI >= 4); signals to processes outside the sandbox fail (ABI >= 6).
- audit hook (best effort, only when neither a network namespace nor Landlock's network rules are
  available): socket connect/bind/sendto/getaddrinfo raise PermissionError. C extensions bypass it.
"""

import ctypes
import json
import os
import platform
import resource
import struct
import sys
import traceback

# --- seccomp ------------------------------------------------------------------------------------------

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_CLONE_THREAD = 0x00010000
_EAGAIN = 11
_ENOSYS = 38
# audit arch, clone, fork, vfork, clone3 (fork/vfork do not exist on aarch64)
_SYSCALLS = {
    "x86_64": (0xC000003E, 56, 57, 58, 435),
    "aarch64": (0xC00000B7, 220, None, None, 435),
}
# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _no_new_privs(libc):
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def _assemble(program):
    """Resolve ("jeq", k, true_label, false_label) style instructions into sock_filter bytes."""
    labels = {}
    instructions = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)
    out = b""
    for index, (code, k, jt, jf) in enumerate(instructions):
        def rel(label: str | None, here: int = index) -> int:
            return 0 if label is None else labels[label] - here - 1

        out += struct.pack("=HBBI", code, rel(jt), rel(jf), k)
    return out, len(instructions)


def install_no_fork_seccomp():
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise OSError(f"seccomp filter: unsupported architecture {machine}")
    arch, clone, fork, vfork, clone3 = _SYSCALLS[machine]
    program = [
        (_LD_W_ABS, 4, None, None),  # seccomp_data.arch
        (_JEQ_K, arch, None, "allow"),
        (_LD_W_ABS, 0, None, None),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # x32 syscall numbers would dodge the checks below
        program.append((_JGE_K, 0x40000000, "enosys", None))
    program.append((_JEQ_K, clone3, "enosys", None))
    for nr in (fork, vfork):
        if nr is not None:
            program.append((_JEQ_K, nr, "eagain", None))
    program += [
        (_JEQ_K, clone, None, "allow"),
        (_LD_W_ABS, 16, None, None),  # low 32 bits of args[0]: the clone flags
        (_JSET_K, _CLONE_THREAD, "allow", "eagain"),
        "allow",
        (_RET_K, _SECCOMP_RET_ALLOW, None, None),
        "eagain",
        (_RET_K, _SECCOMP_RET_ERRNO | _EAGAIN, None, None),
        "enosys",
        (_RET_K, _SECCOMP_RET_ERRNO | _ENOSYS, None, None),
    ]
    code, length = _assemble(program)
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(length, ctypes.cast(buf, ctypes.c_void_p))
    libc = _libc()
    _no_new_privs(libc)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


# --- Landlock -------------------------------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = 444  # same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_WRITE_FILE = 1 << 1
_FS_WRITE_RIGHTS_V1 = sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, remove, make_*
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1


def landlock_abi():
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), _LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(abi), 0)


def install_landlock(workdir, block_tcp):
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available")
    fs = _FS_WRITE_RIGHTS_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if (block_tcp and abi >= 4) else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    # The struct grew with the ABI; pass only the fields this kernel knows.
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr_buf, ctypes.c_size_t(len(attr)), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    file_rights = _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)
    for path, rights in ((workdir, fs), ("/dev/null", file_rights)):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)  # packed struct
        if libc.syscall(_SYS_LANDLOCK_ADD_RULE, int(ruleset), _LANDLOCK_RULE_PATH_BENEATH, rule, 0) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
        os.close(fd)
    _no_new_privs(libc)
    if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, int(ruleset), 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    os.close(ruleset)


# --- audit hook (best-effort network block) ---------------------------------------------------------------


def install_network_audit_hook():
    import socket

    inet = (socket.AF_INET, socket.AF_INET6)

    def hook(event, args):
        if event == "socket.getaddrinfo" or (
            event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg") and args[0].family in inet
        ):
            raise PermissionError("network access is disabled in this sandbox")

    sys.addaudithook(hook)


# --- worker and reaper -----------------------------------------------------------------------------------


def _set_limit(which, value):
    if value is None:
        return
    soft, hard = resource.getrlimit(which)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))


def _lock_down(cfg):
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_CPU, cfg.get("cpu_seconds"))
    _set_limit(resource.RLIMIT_FSIZE, cfg.get("fsize_bytes"))
    _set_limit(resource.RLIMIT_NOFILE, cfg.get("nofile"))
    _set_limit(resource.RLIMIT_NPROC, cfg.get("nproc"))
    if cfg.get("seccomp"):
        install_no_fork_seccomp()
    if cfg.get("landlock"):
        install_landlock(os.getcwd(), block_tcp=cfg.get("landlock_block_tcp", False))
    if cfg.get("audit_block_network"):
        install_network_audit_hook()
    # Last: the limits above need memory of their own (ctypes, the filter).
    _set_limit(resource.RLIMIT_AS, cfg.get("memory_bytes"))


def _run_worker(cfg):
    try:
        _lock_down(cfg)
    except Exception as exc:  # noqa: BLE001 - fail closed: never run the snippet with a protection missing
        print(f"sandbox setup failed: {exc!r}", file=sys.stderr)
        os._exit(125)
    with open(cfg["main"], encoding="utf-8") as f:
        source = f.read()
    globals_ = {"__name__": "__main__", "__file__": cfg["main"], "__builtins__": __builtins__}
    try:
        exec(compile(source, cfg["main"], "exec"), globals_)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - report whatever the snippet raised, as python would
        # Drop this runner's own frame so the traceback shows only the snippet.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        raise SystemExit(1) from None
    raise SystemExit(0)


def _reap_until(worker_pid):
    """Wait for the worker, reaping any orphan meanwhile; return a shell-style exit status."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == worker_pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def main():
    cfg = json.loads(sys.argv[1])
    worker = os.fork()
    if worker == 0:
        _run_worker(cfg)  # exits via SystemExit, through normal interpreter shutdown
    status = _reap_until(worker)
    sys.stdout.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
