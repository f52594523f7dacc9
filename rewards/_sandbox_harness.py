"""Test harness that runs INSIDE the sandbox: ``python -I -S -B /sandbox/_harness.py``.

Standard library only. It is PID 1 of the sandbox's PID namespace. It reads (then deletes)
``/sandbox/_spec.json`` and runs each test in fresh processes in their own process group. After
each test it SIGKILLs every other process in the namespace (as PID 1, ``kill(-1)`` reaches them
all). It prints one JSON line to the host: ``{"results": [{"passed": bool, "reason": str}, ...]}``.

The candidate always runs in a fresh interpreter (fork, then exec of ``python -c <this file's
text, read before any candidate ran> --candidate ARGS``) whose only descriptors are its stdio
files and, in asserts mode, its two request pipes. Before that exec the candidate's seccomp
filter is installed (no new processes: see ``rewards/_seccomp.py``), so one process and its
RLIMIT_AS hold all it can allocate.

Test modes:
* ``asserts``: the verdict is decided outside the candidate's process. A *tester* (a fork of
  this trusted harness) runs the test code; the candidate's process only loads the program and
  answers requests: "the global ``f``", "call it with ``(2,)``", "attribute ``n`` of object 7".
  Values cross as plain data (None, bool, int, float, complex, str, bytes, bytearray, list,
  tuple, dict, set, frozenset, range), decoded on the tester's side into genuine built-in
  objects; anything else stays in the candidate as a handle the tests may call or read
  attributes from but not compare or test for truth. The comparisons, ``assert``, the builtins
  and every stdlib module the tests use are the tester's own, so the candidate can influence the
  verdict only through the values it returns. Lists, dicts, sets and bytearrays passed as
  arguments are copied back after the call (in-place algorithms work).
* ``stdio``: the candidate runs as ``__main__`` with the test input on stdin; it passes when it
  exits 0 and its stdout equals the expected output up to trailing whitespace on each line and
  trailing blank lines. The expected outputs exist only in the harness's memory.

The harness makes itself (and so the tester) non-dumpable, and the base seccomp filter refuses
``ptrace``/``pidfd_getfd``, so the candidate cannot reach the tester's memory or descriptors.
Layer 2 (``audit`` in the spec): an audit hook refuses sockets, subprocesses, ctypes and stray
``open`` calls in the candidate; a speed bump only: the verdict never depends on it.
"""
import builtins
import json
import os
import resource
import signal
import struct
import sys
import time
import traceback

WORK, TMP = "/sandbox", "/tmp"
BLOCKED_EVENTS = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                  "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
                  "ctypes.call_function", "socket.__new__", "socket.connect", "socket.bind",
                  "socket.getaddrinfo", "socket.sendto", "os.kill", "os.killpg", "gc.get_objects",
                  "gc.get_referrers", "gc.get_referents")
MAX_MESSAGE = 16 << 20
"""Largest request or answer between tester and candidate (bytes of JSON)."""
MAX_DEPTH = 200
"""Deepest nesting of a value that crosses between tester and candidate."""


def _install_audit_hook(read_roots: tuple) -> None:
    """Layer 2 in the candidate. Everything the hook needs is bound at definition time (defaults),
    so module globals cannot turn it off; it refuses rebinding a function's ``__code__`` and the
    ``gc`` walks that would find it. Still a speed bump: the verdict and the walls are elsewhere."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def hook(event, args, _blocked=BLOCKED_EVENTS, _realpath=os.path.realpath, _fsdecode=os.fsdecode,
             _wflags=write_flags, _reads=(WORK, TMP, "/dev/null", "/dev/urandom") + tuple(read_roots),
             _writes=(WORK, TMP, "/dev/null"), _str=str, _int=int, _any=any, _err=PermissionError):
        if event.startswith(_blocked):
            raise _err(f"sandbox: {event} is not allowed")
        if event == "object.__setattr__" and args[1] == "__code__":
            raise _err(f"sandbox: setting {args[1]} is not allowed")
        if event == "open":
            path, mode, flags = args
            if type(path) is _int:
                return
            real = _realpath(_fsdecode(path))
            writing = bool(flags & _wflags) or (type(mode) is _str and _any(c in mode for c in "wax+"))
            roots = _writes if writing else _reads
            if not _any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
                raise _err(f"sandbox: opening {real!r} {'for writing ' if writing else ''}is not allowed")

    sys.addaudithook(hook)


# ---- values as plain data (both sides use these; the decoder builds only built-in objects) ----

def _encode(v, ref, depth=0):
    """``v`` as JSON-ready tagged data; ``ref(v)`` names what is not plain data."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t, d = type(v), depth + 1
    if v is None:
        return ["N"]
    if t is bool:
        return ["B", v]
    if isinstance(v, int) and t is not bool:
        return ["I", int.__format__(v, "x")]
    if isinstance(v, float):
        return ["F", float.__repr__(v)]
    if isinstance(v, complex):
        return ["C", float.__repr__(v.real), float.__repr__(v.imag)]
    if isinstance(v, str):
        return ["S", str.__str__(v)]
    if isinstance(v, bytes):
        return ["Y", bytes.hex(v)]
    if isinstance(v, bytearray):
        return ["A", bytearray.hex(v)]
    if isinstance(v, range):
        return ["R", [_encode(x, ref, d) for x in (v.start, v.stop, v.step)]]
    for tag, base in (("L", list), ("T", tuple), ("E", set), ("Z", frozenset)):
        if isinstance(v, base):
            return [tag, [_encode(x, ref, d) for x in base.__iter__(v)]]
    if isinstance(v, dict):
        return ["D", [[_encode(k, ref, d), _encode(x, ref, d)] for k, x in dict.items(v)]]
    if type(v).__module__ == "numpy" and hasattr(v, "tolist"):  # numpy scalars and arrays, as data
        return _encode(v.tolist(), ref, d)
    return ref(v)


def _decode(x, handle, depth=0):
    """The built-in object ``x`` encodes; ``handle(x)`` turns an ``O``/``M`` tag into a value."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if type(x) is not list or not x or type(x[0]) is not str:
        raise ValueError("malformed value")
    tag, d = x[0], depth + 1
    if tag == "N":
        return None
    if tag == "B" and type(x[1]) is bool:
        return x[1]
    if tag == "I" and type(x[1]) is str:
        return int(x[1], 16)
    if tag == "F" and type(x[1]) is str:
        return float(x[1])
    if tag == "C" and type(x[1]) is str and type(x[2]) is str:
        return complex(float(x[1]), float(x[2]))
    if tag == "S" and type(x[1]) is str:
        return x[1]
    if tag in "YA" and type(x[1]) is str:
        return (bytes if tag == "Y" else bytearray).fromhex(x[1])
    if tag == "R":
        return range(*[_decode(v, handle, d) for v in x[1]])
    if tag in ("L", "T", "E", "Z") and type(x[1]) is list:
        items = [_decode(v, handle, d) for v in x[1]]
        return {"L": list, "T": tuple, "E": set, "Z": frozenset}[tag](items)
    if tag == "D" and type(x[1]) is list:
        return {_decode(k, handle, d): _decode(v, handle, d) for k, v in x[1]}
    if tag in ("O", "M"):
        return handle(x)
    raise ValueError(f"malformed value (tag {tag!r})")


def _send(fd: int, msg) -> None:
    data = json.dumps(msg).encode()
    data = struct.pack("<Q", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _recv(fd: int):
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("the candidate's program exited")
            buf += chunk
        return buf
    n, = struct.unpack("<Q", exact(8))
    if n > MAX_MESSAGE:
        raise ValueError(f"an answer of {n} bytes is larger than {MAX_MESSAGE}")
    return json.loads(exact(n))


# ---- the candidate's side: load the program, answer requests ----

def _candidate(args: dict) -> None:
    """In the candidate's fresh interpreter: run the program, then serve requests; never returns."""
    status = 1
    try:
        with open(f"{WORK}/solution.py") as f:  # read before any candidate code runs
            code = f.read()
        mode, rfd, wfd = args["mode"], args.get("rpc_r"), args.get("rpc_w")
        if args["audit"]:
            _install_audit_hook(tuple(args["read_roots"]))
        del args
        namespace = {"__name__": "__main__" if mode == "stdio" else "solution", "__builtins__": builtins}
        if mode == "stdio":
            try:
                exec(compile(code, "solution.py", "exec"), namespace)  # noqa: S102 - the sandbox's job
                status = 0
            except SystemExit as e:
                status = 0 if e.code in (None, 0) else 1
                if status:
                    print(f"exit status {e.code!r}", file=sys.stderr)
            except BaseException:  # noqa: BLE001 - the candidate's own failure, reported as text
                traceback.print_exc()
        else:
            try:
                exec(compile(code, "solution.py", "exec"), namespace)  # noqa: S102
                ready = ["ok", ["N"]]
            except SystemExit as e:
                ready = ["err", "SystemExit", f"exit({e.code!r}) was called before the tests finished"]
            except BaseException as e:  # noqa: BLE001
                traceback.print_exc()
                ready = ["err", type(e).__name__, str(e)[:500]]
            sys.stdout.flush()
            _send(wfd, ready)
            if ready[0] == "ok":
                _serve(rfd, wfd, namespace)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def _serve(rfd: int, wfd: int, namespace: dict) -> None:
    objects: list = []

    def ref(v):
        if type(v).__name__ == "module":
            return ["M", str(getattr(v, "__name__", ""))]
        objects.append(v)
        return ["O", len(objects) - 1, type(v).__name__]

    def handle(x):
        return objects[x[1]]

    while True:
        try:
            req = _recv(rfd)
        except EOFError:
            return
        try:
            op = req[0]
            target = objects[req[1]] if op not in ("global",) else None
            mutable: list = []
            if op == "global":
                if req[1] not in namespace:
                    raise NameError(f"name {req[1]!r} is not defined")
                out = namespace[req[1]]
            elif op == "call":
                args = [_decode(a, handle) for a in req[2]]
                kwargs = {k: _decode(v, handle) for k, v in req[3].items()}
                out = target(*args, **kwargs)
                mutable = [[i, _encode(a, ref)] for i, a in enumerate(args)
                           if type(a) in (list, dict, set, bytearray)]
            elif op == "getattr":
                out = getattr(target, req[2])
            elif op == "setattr":
                out = setattr(target, req[2], _decode(req[3], handle))
            elif op == "getitem":
                out = target[_decode(req[2], handle)]
            elif op == "setitem":
                target[_decode(req[2], handle)] = _decode(req[3], handle)
                out = None
            elif op == "len":
                out = len(target)
            elif op == "contains":
                out = _decode(req[2], handle) in target
            elif op == "iter":
                out = iter(target)
                objects.append(out)
                _send(wfd, ["ok", ["O", len(objects) - 1, type(out).__name__], []])
                continue
            elif op == "next":
                out = next(target)
            else:
                raise ValueError(f"unknown request {op!r}")
            answer = ["ok", _encode(out, ref), mutable]
        except SystemExit as e:
            answer = ["err", "SystemExit", f"exit({e.code!r}) was called before the tests finished"]
        except BaseException as e:  # noqa: BLE001 - reported to the tester as the call's exception
            answer = ["err", type(e).__name__, str(e)[:500]]
        _send(wfd, answer)


# ---- the tester's side: run the test code, asking the candidate for its names and calls ----

class CandidateError(Exception):
    """An exception the candidate's code raised that is not a built-in exception class."""


class _Remote:
    """A handle on an object that stays in the candidate's process."""

    __slots__ = ("_id", "_link", "_type")

    def __init__(self, link, id_, type_):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_id", id_)
        object.__setattr__(self, "_type", type_)

    def __call__(self, *args, **kwargs):
        return self._link.call(self, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._link.ask(["getattr", self._id, name])

    def __setattr__(self, name, value):
        self._link.ask(["setattr", self._id, name, self._link.encode(value)])

    def __getitem__(self, key):
        return self._link.ask(["getitem", self._id, self._link.encode(key)])

    def __setitem__(self, key, value):
        self._link.ask(["setitem", self._id, self._link.encode(key), self._link.encode(value)])

    def __len__(self):
        n = self._link.ask(["len", self._id])
        if type(n) is not int:
            raise TypeError("len() of a candidate object must be an int")
        return n

    def __contains__(self, item):
        return self._link.ask(["contains", self._id, self._link.encode(item)]) is True

    def __iter__(self):
        return self._link.ask(["iter", self._id])

    def __next__(self):
        return self._link.ask(["next", self._id])

    def __eq__(self, other):
        if isinstance(other, _Remote) and other._id == self._id:
            return True
        raise TypeError(f"a {self._type} object of the candidate cannot be compared: tests compare plain data")

    def __ne__(self, other):
        return not self.__eq__(other)

    def __bool__(self):
        raise TypeError(f"a {self._type} object of the candidate has no truth value: tests check plain data")

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<candidate {self._type} object>"


class _Link:
    """The tester's end of the request pipes to one candidate process."""

    def __init__(self, rfd: int, wfd: int):
        self.rfd, self.wfd = rfd, wfd

    def encode(self, v):
        def ref(x):
            if isinstance(x, _Remote):
                return ["O", x._id, x._type]
            raise TypeError(f"a {type(x).__name__} of the test cannot be passed to the candidate's code")
        return _encode(v, ref)

    def _handle(self, x):
        if x[0] == "M":
            name = x[1]
            if type(name) is str and name in sys.stdlib_module_names:
                return __import__(name)  # the tester's own module, not the candidate's copy
            raise ImportError(f"the test uses module {name!r} of the candidate, which is not in the stdlib")
        if type(x[1]) is not int or type(x[2]) is not str:
            raise ValueError("malformed object handle")
        return _Remote(self, x[1], x[2])

    def ask(self, request, on_mutable=None):
        _send(self.wfd, request)
        return self.answer(on_mutable)

    def answer(self, on_mutable=None):
        """Read one answer: its value, or the candidate's exception raised here."""
        answer = _recv(self.rfd)
        if type(answer) is not list or not answer:
            raise ValueError("malformed answer")
        if answer[0] == "ok":
            if on_mutable is not None:
                on_mutable(answer[2])
            return _decode(answer[1], self._handle)
        name, message = str(answer[1]), str(answer[2])
        cls = getattr(builtins, name, None)
        error: Exception = CandidateError(f"{name}: {message}")
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                error = cls(message)
            except TypeError:
                pass  # an exception class with a special constructor
        raise error

    def call(self, target: _Remote, args: tuple, kwargs: dict):
        def copy_back(mutated):
            for i, value in mutated:
                orig, new = args[i], _decode(value, self._handle)
                if type(orig) is list and type(new) is list:
                    orig[:] = new
                elif type(orig) in (dict, set) and type(new) is type(orig):
                    orig.clear()
                    orig.update(new)
                elif type(orig) is bytearray and type(new) is bytearray:
                    orig[:] = new
        return self.ask(["call", target._id, [self.encode(a) for a in args],
                         {str(k): self.encode(v) for k, v in kwargs.items()}], copy_back)


class _TestGlobals(dict):
    """The tests' namespace: their own names, then the builtins, then the candidate's globals."""

    def __init__(self, link: _Link):
        super().__init__(__builtins__=builtins, __name__="__main__")
        self.link = link

    def __missing__(self, name):
        if hasattr(builtins, name):
            raise KeyError(name)  # the tester's builtins win over the candidate's definitions
        try:
            return self.link.ask(["global", name])
        except NameError:
            raise KeyError(name) from None


def _death(status: int) -> str:
    """Why a process that ended with wait ``status`` failed (signal or exit status)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        why = {signal.SIGXCPU: "CPU time limit", signal.SIGXFSZ: "file size limit (output too large)",
               signal.SIGKILL: "killed (CPU hard limit or out of memory)"}.get(sig, "")
        return f"killed by {signal.Signals(sig).name} {why}".strip()
    return f"exit status {os.WEXITSTATUS(status)}"


def _tester(test_code: str, link: _Link, verdict_w: int, candidate_pid: int) -> None:
    """Run one test's code in this (trusted) process; write the verdict; never returns."""
    verdict = {"passed": False, "reason": ""}
    try:
        link.answer()  # the program loaded (or raised / exited while loading)
        exec(compile(test_code, "test.py", "exec"), _TestGlobals(link))  # noqa: S102 - dataset's test
        verdict["passed"] = True
    except SystemExit as e:
        verdict["reason"] = f"exit({e.code!r}) was called before the tests finished"
    except EOFError as e:
        try:  # the candidate's process ended: say how
            _, status = os.waitpid(candidate_pid, 0)
            verdict["reason"] = f"{e} ({_death(status)})"
        except ChildProcessError:
            verdict["reason"] = str(e)
    except BaseException as e:  # noqa: BLE001 - the test failed; say how
        verdict["reason"] = traceback.format_exception_only(type(e), e)[-1].strip()[:500]
    try:
        os.write(verdict_w, json.dumps(verdict).encode())
    finally:
        os._exit(0)


# ---- the harness: one tester (asserts) or candidate (stdio) per test ----

def _install_seccomp(prog: bytes) -> None:
    """Install a classic-BPF seccomp filter (bytes of ``struct sock_filter``) on this process."""
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "cannot install the candidate's seccomp filter")


def _exec_candidate(spec: dict, source: str, i: int, keep: tuple, extra: dict) -> None:
    """In a fresh fork: stdio files, only ``keep`` fds, the candidate filter, exec. Never returns."""
    try:
        cpu = max(1, int(spec["cpu_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        for fd, path, flags in ((0, f"{TMP}/in{i}", os.O_RDONLY),
                                (1, f"{TMP}/out{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, f"{TMP}/err{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o600)
            os.dup2(new, fd)
            os.close(new)
        prev = 2
        for fd in sorted(keep):
            os.closerange(prev + 1, fd)
            os.set_inheritable(fd, True)
            prev = fd
        filt = bytes.fromhex(spec["seccomp"])
        os.closerange(prev + 1, 65536)
        if filt:
            _install_seccomp(filt)
        args = {"mode": spec["mode"], "audit": spec["audit"], "read_roots": spec["read_roots"], **extra}
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", "-c", source, "--candidate", json.dumps(args)])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        os._exit(1)


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


def _start_tester(i: int, test: dict, spec: dict, source: str, verdict_w: int) -> int:
    """Fork the tester (its own process group), which forks the candidate and runs the test."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setpgid(0, 0)
        cpu = max(1, int(spec["cpu_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        to_cand_r, to_cand_w = os.pipe()
        from_cand_r, from_cand_w = os.pipe()
        cand = os.fork()
        if cand == 0:
            _exec_candidate(spec, source, i, (to_cand_r, from_cand_w), {"rpc_r": to_cand_r, "rpc_w": from_cand_w})
        for fd in (to_cand_r, from_cand_w):
            os.close(fd)
        _tester(test.get("code", ""), _Link(from_cand_r, to_cand_w), verdict_w, cand)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        os._exit(1)
    return 0  # unreachable


def _run_one(i: int, test: dict, spec: dict, source: str) -> dict:
    mode = spec["mode"]
    with open(f"{TMP}/in{i}", "w") as f:
        f.write(test.get("input", ""))
    verdict_r, verdict_w = os.pipe()
    if mode == "asserts":
        pid = _start_tester(i, test, spec, source, verdict_w)
    else:
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            _exec_candidate(spec, source, i, (), {})
    os.close(verdict_w)
    deadline = time.monotonic() + spec["test_timeout_s"]
    status, delay = None, 0.001
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            _kill_leftovers()
            os.close(verdict_r)
            return {"passed": False, "reason": f"timeout: test {i} ran past {spec['test_timeout_s']} s"}
        else:
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
    _kill_leftovers()  # the candidate and anything else the test left running
    os.set_blocking(verdict_r, False)
    try:
        verdict = os.read(verdict_r, 4096)
    except BlockingIOError:
        verdict = b""
    os.close(verdict_r)
    if os.WIFSIGNALED(status):
        return {"passed": False, "reason": _death(status)}
    if mode == "asserts":
        try:
            result = json.loads(verdict)
            return {"passed": result["passed"] is True, "reason": str(result["reason"])}
        except (ValueError, KeyError, TypeError):
            return {"passed": False, "reason": _last_line(f"{TMP}/err{i}") or "the test did not run to its end"}
    if os.WEXITSTATUS(status) != 0:
        return {"passed": False, "reason": _last_line(f"{TMP}/err{i}") or f"exit status {os.WEXITSTATUS(status)}"}
    with open(f"{TMP}/out{i}", errors="replace") as f:
        got = f.read()
    if _normalise(got) == _normalise(test.get("output", "")):
        return {"passed": True, "reason": ""}
    return {"passed": False, "reason": f"wrong output: expected {test.get('output', '')[:80]!r}, got {got[:80]!r}"}


def main() -> None:
    if sys.argv[1:2] == ["--candidate"]:
        _candidate(json.loads(sys.argv[2]))
    out = os.fdopen(os.dup(1), "w")
    with open(f"{WORK}/_spec.json") as f:
        spec = json.load(f)
    os.unlink(f"{WORK}/_spec.json")  # the expected outputs and tests stay in this process only
    with open(__file__) as f:
        source = f.read()
    try:
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: same-uid processes cannot ptrace us
    except Exception:  # noqa: BLE001, S110 - best effort (no libffi): seccomp refuses ptrace anyway
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
