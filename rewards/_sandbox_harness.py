"""Test harness that runs INSIDE the sandbox: ``python -I -S -B /sandbox/_harness.py``.

Standard library only. It is PID 1 of the sandbox's PID namespace. It reads (then deletes)
``/sandbox/_spec.json``, and runs each test in a fresh interpreter (fork, then exec of
``python -c <this file's text, read before any candidate ran> --child ARGS``) in its own process
group, with its own CPU limit, stdin from a file and stdout/stderr to files capped by
RLIMIT_FSIZE. After each test it SIGKILLs every other process in the namespace (as PID 1,
``kill(-1)`` reaches them all, even daemons that left the process group). It prints one JSON
line to the host: ``{"results": [{"passed": bool, "reason": str}, ...]}``.

Test modes:
* ``asserts``: the candidate is executed as module ``solution`` (its ``if __name__ ==
  "__main__"`` block does not run), then the test code runs in the same namespace. It passes only
  if the test code finishes; as proof the child then copies a nonce the harness sends it *after*
  the fork, so a candidate that exits early (``sys.exit(0)``, ``os._exit(0)``) fails.
* ``stdio``: the candidate runs as ``__main__`` with the test input on stdin; it passes when it
  exits 0 and its stdout equals the expected output up to trailing whitespace on each line and
  trailing blank lines. The expected outputs exist only in the harness's memory: the child is a
  fresh interpreter and the spec file is gone, so the candidate cannot read the answer.

The child's only fds are 0/1/2 (files) and the two nonce pipes; the harness makes itself
non-dumpable so a same-uid child cannot ptrace it. Layer 2 (``audit`` in the spec): before the
candidate runs, an audit hook refuses socket creation, subprocesses, fork/exec, ctypes, and
``open`` outside ``/sandbox``, ``/tmp`` (writes) plus the stdlib (reads). Audit hooks are a speed
bump, not a wall (C extensions can bypass them); the kernel namespaces and rlimits are the wall.
"""
import builtins
import json
import os
import resource
import secrets
import signal
import sys
import time
import traceback

WORK, TMP = "/sandbox", "/tmp"
BLOCKED_EVENTS = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                  "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
                  "ctypes.call_function", "socket.__new__", "socket.connect", "socket.bind",
                  "socket.getaddrinfo", "socket.sendto", "os.kill", "os.killpg")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_audit_hook(read_roots: tuple) -> None:
    def under(path: str, roots: tuple) -> bool:
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(BLOCKED_EVENTS):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            real = os.path.realpath(os.fsdecode(path))
            writing = bool(flags & WRITE_FLAGS) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            roots = (WORK, TMP, "/dev/null") if writing else (WORK, TMP, "/dev/null", "/dev/urandom") + read_roots
            if not under(real, roots):
                raise PermissionError(f"sandbox: opening {real!r} {'for writing ' if writing else ''}is not allowed")

    sys.addaudithook(hook)


def _child(args: dict) -> None:
    """In the fresh child interpreter: run the candidate (and the test); never returns."""
    status = 1
    mode, nonce_r, proof_w = args["mode"], args["nonce_r"], args["proof_w"]
    try:
        with open(f"{WORK}/solution.py") as f:  # both read before any candidate code runs
            code = f.read()
        test = ""
        if args["test_path"]:
            with open(args["test_path"]) as f:
                test = f.read()
        if args["audit"]:
            read_roots = tuple(args["read_roots"])
            _install_audit_hook(read_roots)
        del args
        namespace = {"__name__": "__main__" if mode == "stdio" else "solution", "__builtins__": builtins}
        try:
            exec(compile(code, "solution.py", "exec"), namespace)  # noqa: S102 - the sandbox's job
            if mode == "asserts":
                exec(compile(test, "test.py", "exec"), namespace)  # noqa: S102
            status = 0
        except SystemExit as e:
            if mode == "asserts":
                print(f"exit({e.code!r}) was called before the tests finished", file=sys.stderr)
            else:
                status = 0 if e.code in (None, 0) else 1
                if status:
                    print(f"exit status {e.code!r}", file=sys.stderr)
        except BaseException:  # noqa: BLE001 - the candidate's own failure, reported as text
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        if status == 0 and mode == "asserts":
            os.write(proof_w, os.read(nonce_r, 64))
    finally:
        os._exit(status)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read()[-4000:].splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def _kill_leftovers() -> None:
    """As PID 1 of the namespace: SIGKILL every other process in it (daemons a test left) and reap."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.001)
        except ChildProcessError:
            return


def _run_one(i: int, test: dict, spec: dict, source: str) -> dict:
    mode = spec["mode"]
    stdin_path, out_path, err_path = f"{TMP}/in{i}", f"{TMP}/out{i}", f"{TMP}/err{i}"
    test_path = f"{TMP}/test{i}.py" if mode == "asserts" else ""
    with open(stdin_path, "w") as f:
        f.write(test.get("input", ""))
    if test_path:
        with open(test_path, "w") as f:
            f.write(test.get("code", ""))
    nonce_r, nonce_w = os.pipe()
    proof_r, proof_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must never return into the harness loop
        try:
            os.setpgid(0, 0)
            cpu = max(1, int(spec["cpu_s"] + 0.999))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            for fd, path, flags in ((0, stdin_path, os.O_RDONLY), (1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                new = os.open(path, flags, 0o600)
                os.dup2(new, fd)
                os.close(new)
            os.close(nonce_w)
            os.close(proof_r)
            keep = sorted((nonce_r, proof_w))
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 4096)
            for fd in keep:
                os.set_inheritable(fd, True)
            args = {"mode": mode, "nonce_r": nonce_r, "proof_w": proof_w, "test_path": test_path,
                    "audit": spec["audit"], "read_roots": spec["read_roots"]}
            # A fresh interpreter: the expected outputs (in this process's memory) never reach the
            # candidate, and the runner code comes from memory, not from a file it could rewrite.
            os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", "-c", source, "--child", json.dumps(args)])
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(nonce_r)
    os.close(proof_w)
    nonce = secrets.token_hex(16).encode()
    os.write(nonce_w, nonce)
    os.close(nonce_w)
    deadline = time.monotonic() + spec["test_timeout_s"]
    status, delay = None, 0.001
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            _kill_leftovers()
            os.close(proof_r)
            return {"passed": False, "reason": f"timeout: test {i} ran past {spec['test_timeout_s']} s"}
        else:
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
    _kill_leftovers()  # anything the test left running, even if it left the process group
    proof = os.read(proof_r, 64)
    os.close(proof_r)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit (output too large)",
               signal.SIGKILL: "killed (CPU hard limit or out of memory)"}.get(sig, "")
        return {"passed": False, "reason": f"killed by {signal.Signals(sig).name} {why}".strip()}
    if os.WEXITSTATUS(status) != 0:
        return {"passed": False, "reason": _last_line(err_path) or f"exit status {os.WEXITSTATUS(status)}"}
    if mode == "asserts":
        ok = proof == nonce
        return {"passed": ok, "reason": "" if ok else "the test did not run to its end"}
    with open(out_path, errors="replace") as f:
        got = f.read()
    if _normalise(got) == _normalise(test.get("output", "")):
        return {"passed": True, "reason": ""}
    return {"passed": False, "reason": f"wrong output: expected {test.get('output', '')[:80]!r}, got {got[:80]!r}"}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child(json.loads(sys.argv[2]))
    out = os.fdopen(os.dup(1), "w")
    with open(f"{WORK}/_spec.json") as f:
        spec = json.load(f)
    os.unlink(f"{WORK}/_spec.json")  # the expected outputs stay in this process only
    with open(__file__) as f:
        source = f.read()
    try:
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: same-uid children cannot ptrace us
    except Exception:  # noqa: BLE001, S110 - best effort (no libffi): the pipes still carry the verdict
        pass
    results = []
    for i, test in enumerate(spec["tests"]):
        try:
            results.append(_run_one(i, test, spec, source))
        except OSError as e:
            results.append({"passed": False, "reason": f"harness error: {e}"})
    out.write(json.dumps({"results": results}) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
