"""Reward worker process: ``python -m rewards._worker FD`` (started by :mod:`rewards.runner`).

Talks to its parent over the socket ``FD`` with pickled tuples:

* parent -> worker: ``("init", sys_path, specs)`` once (specs: ``{term: (kind, value)}``, resolved
  at once so heavy imports happen before the first step), then ``("call", call_id, term, kwargs,
  prompts, completions, fields, timeout_s)``.
* worker -> parent: ``("ready",)`` or ``("init_error", text)``, then ``("result", call_id,
  "checked", (problem, per_sample))`` (plain floats and texts, see ``runner.check_values``) or
  ``("result", call_id, "error", text)``.

``python -m rewards._worker FD MEMORY_MB``: the worker caps its address space first (0 = no cap).

Calls run on the worker's main thread (so libraries that time themselves out with SIGALRM, like
math-verify, can). A call that hangs is not the worker's problem: the parent kills the whole
process group at the deadline and starts a fresh worker.
"""
from __future__ import annotations

import resource
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    memory_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    if memory_mb > 0:  # before any reward is imported: everything the worker allocates counts
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    _, sys_path, specs = conn.recv()
    sys.path[:] = list(sys_path)
    try:
        from rewards.registry import load_reward
        from rewards.runner import check_values, invoke_reward

        fns = {term: load_reward(**{kind: value}) for term, (kind, value) in specs.items()}
        for fn in fns.values():
            warmup = getattr(fn, "warmup", None)
            if callable(warmup):
                warmup()
    except BaseException as e:  # noqa: BLE001 - anything that stops start-up goes back to the parent
        conn.send(("init_error", _describe(e)))
        return
    conn.send(("ready",))
    while True:
        try:
            msg: Any = conn.recv()
        except EOFError:
            return
        _, call_id, term, kwargs, prompts, completions, fields, timeout_s = msg
        try:
            values = invoke_reward(fns[term], prompts, completions, fields, kwargs, timeout_s)
            # Checked here: only plain floats and texts cross back (no object of the reward's is
            # unpickled in the trainer).
            checked = check_values(values, len(completions))
            conn.send(("result", call_id, "checked", checked))
        except BaseException as e:  # noqa: BLE001 - the reward's own failure
            conn.send(("result", call_id, "error", _describe(e)))


if __name__ == "__main__":
    main()
