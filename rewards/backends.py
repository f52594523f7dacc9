"""Where reward calls run for :class:`rewards.runner.RewardRunner`: threads or worker processes.

:class:`ThreadBackend` runs calls in daemon threads (a hung one is abandoned and counted);
:class:`ProcessBackend` runs them in ``python -m rewards._worker`` processes under an address-space
cap, killing and replacing a worker whose call runs past its deadline (its whole process group,
so sandboxes it started die too). Both return one :data:`Outcome` per call, by the deadline.
"""
from __future__ import annotations

import asyncio
import collections
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

Outcome = tuple[str, Any]
"""``("checked", (problem, values))`` (from a worker), ``("ok", raw_values)`` (a thread),
``("error", text)`` or ``("timeout", text)`` for one call."""


class ThreadBackend:
    """Calls in daemon threads; hung ones are abandoned, counted and capped at ``max_hung``."""

    def __init__(self, num_workers: int, max_hung: int) -> None:
        self.num_workers, self.max_hung = num_workers, max_hung
        self.hung: list[threading.Thread] = []
        self._lock = threading.Lock()  # several terms run at once, each through run()

    def run(self, jobs: list[Callable[[float], Any]], deadline: float) -> list[Outcome]:
        with self._lock:
            self.hung = [t for t in self.hung if t.is_alive()]
            n_hung = len(self.hung)
        if n_hung >= self.max_hung:
            why = (f"{n_hung} reward calls from earlier steps are still running past their timeout "
                   "(threads cannot be killed); refusing to start more. Fix the hanging reward or use "
                   "isolation='process'")
            return [("error", why)] * len(jobs)
        results: list[Outcome | None] = [None] * len(jobs)
        queue = collections.deque(range(len(jobs)))
        busy: dict[threading.Thread, int] = {}
        cond = threading.Condition()
        stopped = False

        def work() -> None:
            me = threading.current_thread()
            while True:
                with cond:
                    if stopped or not queue:
                        return
                    i = queue.popleft()
                    busy[me] = i
                try:
                    out: Outcome = ("ok", jobs[i](deadline))
                except asyncio.TimeoutError:
                    out = ("timeout", "async reward cancelled at the deadline")
                except BaseException as e:  # noqa: BLE001 - the reward's failure, recorded per sample
                    out = ("error", f"{type(e).__name__}: {e}")
                with cond:
                    busy.pop(me, None)
                    if not stopped:
                        results[i] = out
                    cond.notify_all()

        threads = [threading.Thread(target=work, daemon=True, name=f"reward-{k}")
                   for k in range(min(self.num_workers, len(jobs)))]
        for t in threads:
            t.start()
        with cond:
            while any(r is None for r in results) and time.monotonic() < deadline:
                cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            stopped = True
            abandoned = list(busy)
        with self._lock:
            self.hung += abandoned
        return [r if r is not None else ("timeout", "did not finish before the step's deadline") for r in results]


class _Worker:
    """One reward worker process (``python -m rewards._worker``) and its socket."""

    def __init__(self, specs: dict[str, tuple[str, str]], memory_mb: int = 0) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen([sys.executable, "-m", "rewards._worker", str(child.fileno()), str(memory_mb)],
                                     pass_fds=(child.fileno(),), start_new_session=True, env=env)
        child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(("init", list(sys.path), specs))
        self.ready = False
        self.init_error: str | None = None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.conn.close()


class ProcessBackend:
    """Calls in ``num_workers`` worker processes; a worker busy at the deadline is killed and replaced."""

    def __init__(self, num_workers: int, specs: dict[str, tuple[str, str]], startup_timeout_s: float,
                 memory_mb: int = 0) -> None:
        self.specs, self.startup_timeout_s, self.memory_mb = specs, startup_timeout_s, memory_mb
        self.workers = [_Worker(specs, memory_mb) for _ in range(num_workers)]
        self.call_id = 0
        self._finalizer = weakref.finalize(self, _kill_all, self.workers)

    def _await_ready(self) -> None:
        end = time.monotonic() + self.startup_timeout_s
        for k, w in enumerate(self.workers):
            while not w.ready and w.init_error is None:
                if not w.conn.poll(max(0.0, end - time.monotonic())):
                    w.init_error = f"the reward worker did not start within {self.startup_timeout_s} s"
                    break
                try:
                    msg = w.conn.recv()
                except EOFError:
                    w.init_error = f"the reward worker exited while starting (exit code {w.proc.wait()})"
                    break
                w.ready = msg[0] == "ready"
                w.init_error = None if w.ready else msg[1]

    def prepare(self) -> None:
        """Wait until every worker has imported its rewards (outside the step's deadline)."""
        self._await_ready()
        for k, w in enumerate(self.workers):
            if w.init_error is not None:  # a start-up failure: try a fresh worker once per step
                w.kill()
                self.workers[k] = _Worker(self.specs, self.memory_mb)
        self._await_ready()

    def run(self, payloads: list[tuple[str, dict, list, list, dict]], deadline: float,
            per_call_s: float | None = None) -> list[Outcome]:
        """Run the calls; each ends by ``deadline`` and, if given, ``per_call_s`` after it started."""
        results: list[Outcome | None] = [None] * len(payloads)
        queue = collections.deque(range(len(payloads)))
        running: dict[int, tuple[int, int, float]] = {}  # worker index -> (call id, payload index, end)
        while queue or running:
            for k, w in enumerate(self.workers):
                if queue and k not in running:
                    if not w.ready:
                        if w.init_error is None:
                            continue  # a replacement still starting: waited for below
                        i = queue.popleft()
                        results[i] = ("error", f"reward worker unavailable: {w.init_error}")
                        continue
                    i = queue.popleft()
                    self.call_id += 1
                    term, kwargs, prompts, completions, fields = payloads[i]
                    now = time.monotonic()
                    end = deadline if per_call_s is None else min(deadline, now + per_call_s)
                    try:
                        w.conn.send(("call", self.call_id, term, kwargs, prompts, completions, fields,
                                     max(0.0, end - now)))
                    except (pickle.PicklingError, TypeError, AttributeError) as e:
                        results[i] = ("error", f"prompts/completions/fields cannot be sent to a worker: {e}")
                        continue
                    running[k] = (self.call_id, i, end)
            starting = [k for k, w in enumerate(self.workers)
                        if queue and k not in running and not w.ready and w.init_error is None]
            if not running and not starting:
                continue
            first_end = min([end for _, _, end in running.values()] + [deadline])
            ready = wait([self.workers[k].conn for k in [*running, *starting]],
                         timeout=max(0.0, first_end - time.monotonic()))
            for k in starting:
                w = self.workers[k]
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                        w.ready, w.init_error = msg[0] == "ready", (None if msg[0] == "ready" else msg[1])
                    except (EOFError, OSError):
                        w.init_error = f"the reward worker exited while starting (exit code {w.proc.wait()})"
            for k in list(running):
                w = self.workers[k]
                if w.conn not in ready:
                    continue
                call_id, i, _ = running.pop(k)
                try:
                    _, got_id, status, value = w.conn.recv()
                    results[i] = (status, value) if got_id == call_id else ("error", "internal: stale worker reply")
                except (EOFError, OSError):
                    code = w.proc.wait()
                    results[i] = ("error", f"the reward worker process died (exit code {code})")
                    print(f"reward worker {w.proc.pid} (term {', '.join(self.specs)}) died during a call (exit code "
                          f"{code}); started a fresh one; the call's samples are retried one by one",
                          file=sys.stderr, flush=True)
                    self.workers[k] = _Worker(self.specs, self.memory_mb)
                except Exception as e:  # noqa: BLE001 - a reply that cannot be read: drop that worker
                    results[i] = ("error", f"the reward worker's reply cannot be read ({type(e).__name__}: {e})")
                    self.workers[k].kill()
                    self.workers[k] = _Worker(self.specs, self.memory_mb)
            now = time.monotonic()
            for k, (_, i, end) in list(running.items()):
                if now >= end:  # hung: kill the worker's process group, start afresh
                    why = "did not finish before the step's deadline" if end >= deadline else \
                        f"ran past its share ({per_call_s:.2f} s) of the per-sample retry budget"
                    results[i] = ("timeout", f"{why} (worker killed)")
                    self.workers[k].kill()
                    self.workers[k] = _Worker(self.specs, self.memory_mb)
                    del running[k]
            if now >= deadline:
                for i in queue:
                    results[i] = ("timeout", "still queued at the step's deadline")
                queue.clear()
        return [r if r is not None else ("error", "internal: no result") for r in results]

    def close(self) -> None:
        self._finalizer()


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()
