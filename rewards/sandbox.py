"""Run untrusted Python (candidate programs from the policy) in an isolated, limited process.

:func:`run_tests` scores a program against tests; :func:`run_python` runs a script. Both go
through ``_sandbox_init.py`` (namespaces, minimal root, dropped privileges, rlimits) and, for
tests, ``_sandbox_harness.py`` (per-test fork, timeouts, verdicts).

Threat model (what holds, by layer):

* **Filesystem** (kernel): the code runs in its own mount namespace whose root is a fresh
  size-limited tmpfs; the only host paths in it are read-only binds of the interpreter, its
  stdlib and libpython, the system shared-library directories and the ELF loader, plus
  ``/dev/null|zero|urandom``. ``/etc``, ``/home``, ``/root`` (other than the stdlib under a pyenv
  prefix), the project, ``/proc`` and ``/sys`` do not exist there; after ``pivot_root`` the old
  root is detached, and the code runs as an unprivileged uid, so it cannot mount or chroot out.
  Writes go to the tmpfs (``/sandbox``, ``/tmp``), which vanishes with the namespace.
* **Network** (kernel): a new network namespace with only a (down) loopback: no route anywhere,
  and the host's loopback services are unreachable.
* **Processes** (kernel): a new PID namespace; the harness is its PID 1, so when it exits or the
  host kills the launcher's process group at the wall timeout, every process inside dies. A
  dedicated uid per sandbox makes RLIMIT_NPROC a per-sandbox cap (fork bombs stop there).
* **Resources**: a seccomp filter (``rewards/_seccomp.py``, installed before the interpreter
  starts, so no Python or native code can lift it) makes each candidate one process (no fork,
  vfork or non-thread clone) and refuses the memory that RLIMIT_AS does not count (SysV shared
  memory, semaphores and message queues, POSIX queues, ``memfd_create``) plus sockets, new
  namespaces, mounts, ``ptrace``, ``bpf``, ``io_uring``, keyrings. So a candidate holds at most
  ``memory_mb`` (RLIMIT_AS) + ``tmpfs_mb`` (its filesystem) of host memory, and all of it is
  freed when the run ends. Plus CPU seconds, file size, open files, no core dumps, and the wall
  timeouts (per test in the harness, per run on the host).
* **Verdicts** (asserts mode): the tests run in a trusted tester process, never in the
  candidate's; values cross as plain data, so the candidate influences the verdict only through
  the values its functions return (see ``_sandbox_harness.py``). In stdio mode the expected
  outputs never enter the candidate's process (fresh interpreter, spec file deleted).
* **Second layer** (Python audit hooks, on by default): refuse sockets, subprocesses, ctypes and
  ``open`` outside the work dirs in the candidate. A speed bump, not a wall: the tests run every
  attack with the hooks on and off.

Not covered: kernel exploits and side channels; CPU pressure on other processes within the
limits; the readable system libraries and stdlib are visible (public files, not secrets); a
candidate that hard-codes the answers the tests expect. Non-root users get the same layout
through a user namespace (where unprivileged user namespaces are enabled), but the code then
runs as the calling user mapped to uid 0 with every capability dropped.

Requirements: Linux, root or unprivileged user namespaces (``unshare`` must be permitted: true
as root in our CI containers). :func:`sandbox_support` says whether it works here and why not.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rewards._seccomp import build_filter

SETUP_ERROR_EXIT = 125
SANDBOX_DIRS = ("/sandbox", "/tmp")
"""The sandbox's own writable directories (work dir and temp); no host path may be bound there."""
_HERE = Path(__file__).resolve().parent


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built on this machine (no namespaces); the message says why."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandbox run (plain values, so a config can pass them as kwargs)."""

    cpu_s: float = 5.0
    """CPU seconds per process (each test runs in its own process)."""
    test_timeout_s: float = 5.0
    """Wall seconds per test; the test's process group is killed past it."""
    wall_s: float = 30.0
    """Wall seconds for the whole run; the launcher's process group is killed past it."""
    memory_mb: int = 512
    """Address-space limit per process (RLIMIT_AS)."""
    nproc: int = 32
    """Processes the sandbox's uid may have at once (RLIMIT_NPROC)."""
    file_mb: int = 16
    """Largest file a process may write, including its captured stdout (RLIMIT_FSIZE)."""
    nofile: int = 64
    """Open file descriptors per process."""
    tmpfs_mb: int = 64
    """Size of the sandbox's whole writable filesystem."""
    tmpfs_inodes: int = 4096
    """Files the sandbox may create."""
    audit_hooks: bool = True
    """Second layer: Python audit hooks refusing sockets, subprocesses, ctypes, stray opens."""
    extra_ro_paths: tuple[str, ...] = ()
    """More host paths to bind read-only (e.g. a site-packages with numpy)."""


@dataclass
class SandboxResult:
    """Outcome of :func:`run_python`. ``reason`` is None when the program exited 0."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    reason: str | None


@dataclass
class TestReport:
    """Outcome of :func:`run_tests`: one ``(passed, reason)`` per test, or a run-level reason."""

    passed: list[bool] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    reason: str | None = None
    """Why the whole run failed (timeout, sandbox error), or None."""

    @property
    def fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed and self.reason is None else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.passed) and all(self.passed) and self.reason is None


def _elf_interpreter(binary: str) -> str | None:
    """The PT_INTERP path (dynamic loader) of a 64-bit little-endian ELF binary, if any."""
    with open(binary, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return None
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 3:
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


@functools.lru_cache(maxsize=1)
def _interpreter_binds() -> tuple[str, list[tuple[str, bool, bool]]]:
    """The base interpreter and the ``(path, is_dir, writable)`` binds it needs to start."""
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    # The base installation's stdlib and extension modules (never a virtualenv's site-packages).
    stdlib, dynload = os.path.dirname(os.__file__), sysconfig.get_config_var("DESTSHARED")
    binds: list[tuple[str, bool, bool]] = [(python, False, False), (stdlib, True, False)]
    if dynload:
        binds.append((dynload, True, False))
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and soname:
        binds.append((os.path.join(libdir, soname), False, False))
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in (f"/lib/{arch}", f"/usr/lib/{arch}", "/lib64", "/usr/lib64") if arch else ("/lib", "/usr/lib", "/lib64"):
        if os.path.isdir(d):
            binds.append((d, True, False))
    loader = _elf_interpreter(python)
    if loader:
        binds.append((loader, False, False))
    binds += [("/dev/null", False, True), ("/dev/zero", False, False), ("/dev/urandom", False, False)]
    return python, binds


@functools.lru_cache(maxsize=2)
def _seccomp_hex(candidate: bool) -> str:
    try:
        return build_filter(candidate).hex()
    except ValueError as e:
        raise SandboxUnavailable(f"cannot build the sandbox: {e}") from None


def run_python(script: str, files: dict[str, str | bytes] | None = None,
               limits: SandboxLimits | None = None, args: tuple[str, ...] = (),
               single_process: bool = True) -> SandboxResult:
    """Run ``python -I -S -B /sandbox/<script>`` in the sandbox with ``files`` in ``/sandbox``.

    ``single_process``: also install the candidate's seccomp filter (no fork: RLIMIT_AS then caps
    everything the script can allocate); the test harness runs with False and forks its tests.
    Returns exit status, captured output (each capped by ``limits.file_mb``) and a reason when it
    failed. Raises :class:`SandboxUnavailable` when the sandbox itself cannot be built.
    """
    limits = limits or SandboxLimits()
    filters = [_seccomp_hex(False)] + ([_seccomp_hex(True)] if single_process else [])
    python, binds = _interpreter_binds()
    binds = binds + [(p, os.path.isdir(p), False) for p in limits.extra_ro_paths]
    for path, _, _ in binds:
        real = os.path.realpath(path)
        if any(real == d or real.startswith(d + "/") for d in SANDBOX_DIRS):
            raise SandboxUnavailable(f"cannot bind {path!r} into the sandbox: it lies under one of the "
                                     f"sandbox's own directories {SANDBOX_DIRS}")
    tmp = Path(tempfile.mkdtemp(prefix="dsa_rl_sbx_"))
    try:
        (tmp / "root").mkdir()
        (tmp / "files").mkdir()
        for name, content in (files or {}).items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"sandbox file names must be plain names, got {name!r}")
            (tmp / "files" / name).write_bytes(content.encode() if isinstance(content, str) else content)
        cfg = {"root": str(tmp / "root"), "files_dir": str(tmp / "files"), "binds": binds,
               "tmpfs_mb": limits.tmpfs_mb, "tmpfs_inodes": limits.tmpfs_inodes,
               "argv": [python, "-I", "-S", "-B", f"/sandbox/{script}", *args], "seccomp": filters,
               "limits": {"cpu_s": max(1, int(limits.cpu_s + 0.999)), "memory_mb": limits.memory_mb,
                          "nproc": limits.nproc, "file_mb": limits.file_mb, "nofile": limits.nofile}}
        (tmp / "config.json").write_text(json.dumps(cfg))
        with open(tmp / "stdout", "w+b") as out, open(tmp / "stderr", "w+b") as err:
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(_HERE / "_sandbox_init.py"),
                                     str(tmp / "config.json")], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True, close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # launcher + PID 1 => the whole namespace
                proc.wait()
            wall = time.monotonic() - start
            stdout, stderr = (_read_capped(f, limits.file_mb << 20) for f in (out, err))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rc = proc.returncode
    if rc == SETUP_ERROR_EXIT and "SANDBOX_SETUP_ERROR" in stderr:
        line = next(ln for ln in stderr.splitlines() if "SANDBOX_SETUP_ERROR" in ln)
        raise SandboxUnavailable(f"cannot build the sandbox: {line.split(':', 1)[1].strip()}")
    if timed_out:
        reason: str | None = f"timeout: the sandbox ran past its wall limit of {limits.wall_s} s"
    elif rc == 0:
        reason = None
    elif rc > 128:
        reason = f"killed by {signal.Signals(rc - 128).name}"
    else:
        tail = [ln for ln in stderr.splitlines() if ln.strip()]
        reason = tail[-1] if tail else f"exit status {rc}"
    return SandboxResult(rc, stdout, stderr, timed_out, wall, reason)


def _read_capped(f: Any, cap: int) -> str:
    f.seek(0)
    return f.read(cap).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def sandbox_support() -> tuple[bool, str]:
    """``(works, why)``: whether :func:`run_python` can build a sandbox on this machine."""
    if sys.platform != "linux":
        return False, f"the sandbox needs Linux namespaces (this is {sys.platform})"
    try:
        res = run_python("probe.py", {"probe.py": "print('ok')"}, SandboxLimits(wall_s=30))
    except SandboxUnavailable as e:
        hint = "" if os.geteuid() == 0 else " (run as root, or enable unprivileged user namespaces)"
        return False, f"{e}{hint}"
    if res.stdout.strip() != "ok":
        return False, f"the sandbox probe failed: {res.reason}"
    return True, "namespaces available" + (" (root)" if os.geteuid() == 0 else " (user namespace)")


TestCase = dict[str, str]
"""``{"code": "assert f(1) == 2"}`` (asserts mode) or ``{"input": "1 2", "output": "3"}`` (stdio)."""


def normalise_tests(tests: Any) -> tuple[str, list[TestCase]]:
    """Read a dataset's ``tests`` value into ``(mode, cases)``.

    Accepted: ``{"asserts": [code, ...]}``; ``{"stdio": [{"input", "output"}, ...]}``;
    ``{"inputs": [...], "outputs": [...]}`` (APPS / CodeContests columns); a list of assert-code
    strings; one string of test code; or any of these JSON-encoded in a string.

    >>> normalise_tests(["assert f() == 1", "assert f(2) == 4"])[0]
    'asserts'
    >>> normalise_tests({"inputs": ["1\\n"], "outputs": ["2\\n"]})
    ('stdio', [{'input': '1\\n', 'output': '2\\n'}])
    """
    if isinstance(tests, str):
        try:
            decoded = json.loads(tests)
        except ValueError:
            return "asserts", [{"code": tests}]
        return normalise_tests(decoded) if not isinstance(decoded, str) else ("asserts", [{"code": decoded}])
    if isinstance(tests, dict):
        if "asserts" in tests:
            return "asserts", [{"code": str(c)} for c in tests["asserts"]]
        if "stdio" in tests:
            return "stdio", [{"input": str(t["input"]), "output": str(t["output"])} for t in tests["stdio"]]
        if "inputs" in tests and "outputs" in tests:
            if len(tests["inputs"]) != len(tests["outputs"]):
                raise ValueError("tests: 'inputs' and 'outputs' differ in length")
            return "stdio", [{"input": str(i), "output": str(o)} for i, o in zip(tests["inputs"], tests["outputs"])]
        raise ValueError(f"tests: unknown keys {sorted(tests)}; expected 'asserts', 'stdio' or 'inputs'+'outputs'")
    if isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests):
        return "asserts", [{"code": t} for t in tests]
    raise ValueError(f"tests: cannot read a {type(tests).__name__} as tests")


def run_tests(code: str, tests: Any, limits: SandboxLimits | None = None) -> TestReport:
    """Run candidate ``code`` against ``tests`` (see :func:`normalise_tests`) in the sandbox.

    Each test gets a fresh process; the report gives one pass flag and reason per test. A run
    that fails as a whole (wall timeout, harness killed) has every test failed and ``reason``
    set. Raises :class:`SandboxUnavailable` when no sandbox can be built here.
    """
    limits = limits or SandboxLimits()
    mode, cases = normalise_tests(tests)
    if not cases:
        return TestReport(reason="no tests")
    _, binds = _interpreter_binds()
    read_roots = sorted({p for p, is_dir, _ in binds if is_dir} | set(limits.extra_ro_paths))
    spec = {"mode": mode, "tests": cases, "cpu_s": limits.cpu_s, "test_timeout_s": limits.test_timeout_s,
            "audit": limits.audit_hooks, "read_roots": read_roots, "seccomp": _seccomp_hex(True)}
    files = {"solution.py": code, "_spec.json": json.dumps(spec),
             "_harness.py": (_HERE / "_sandbox_harness.py").read_text()}
    # The harness needs a little room above the candidate: it is PID 1 and forks each test.
    res = run_python("_harness.py", files, limits, single_process=False)
    failed = TestReport(passed=[False] * len(cases), reasons=[""] * len(cases))
    if res.timed_out or res.returncode != 0:
        failed.reason = res.reason or f"harness exit status {res.returncode}"
        return failed
    try:
        results = json.loads(res.stdout.strip().splitlines()[-1])["results"]
    except (ValueError, IndexError, KeyError):
        failed.reason = f"no verdict from the harness: {res.stderr.strip()[-200:]!r}"
        return failed
    return TestReport(passed=[bool(r["passed"]) for r in results], reasons=[str(r["reason"]) for r in results])


def limits_from_kwargs(**kwargs: Any) -> SandboxLimits:
    """A :class:`SandboxLimits` from plain keyword values (unknown keys raise, naming the valid ones)."""
    valid = set(asdict(SandboxLimits()))
    unknown = set(kwargs) - valid
    if unknown:
        raise TypeError(f"unknown sandbox limit(s) {sorted(unknown)}; valid: {sorted(valid)}")
    if "extra_ro_paths" in kwargs:
        kwargs["extra_ro_paths"] = tuple(kwargs["extra_ro_paths"])
    return SandboxLimits(**kwargs)
