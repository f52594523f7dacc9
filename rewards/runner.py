"""Scoring a batch with several reward terms, safely: timeouts, errors, parallel workers.

``RewardRunner(terms, timeout_s, num_workers, on_error, max_error_rate).score(prompts,
completions, fields)`` returns a :class:`RewardResult`: the weighted total per sample, each
term's values, and a record of every failed (term, sample) with the sample's text and the reason.

How a step runs (the guarantees the loop relies on):

* Each term is called on ``num_workers`` contiguous chunks of the batch, in parallel on that
  term's own ``num_workers`` workers (so a hanging term never holds up another); all terms run at
  once, and the calling thread only waits.
* **Deadline**: every call of a step shares one deadline, ``timeout_s`` after the step starts
  (calls still queued then are timed out too). A call that raised or returned a malformed list
  or timed out on a chunk of several samples is retried sample by sample to find the offending
  sample; the retries share a second deadline of ``timeout_s``, and in worker processes each
  retried sample may use its share (``timeout_s * num_workers / retries``) before its worker is
  killed, so a hanging sample zeroes only itself. So ``score`` returns within about
  ``2 * timeout_s`` whatever the rewards do: ``timeout_s`` is a per-batch budget.
* **Shown**: a step with errors prints one line to stderr; with ``error_log`` every failed
  (term, sample) is appended there as a JSON line with the sample's texts and the reason.
* **Values**: whatever a reward returns (a numpy 0-d array, an int too large for a float, an
  object whose ``__float__`` raises, one that cannot be pickled or unpickled) scores 0 with a
  reason; a worker checks the values itself and sends back plain floats and texts only.
* **Memory**: worker processes run under RLIMIT_AS ``memory_mb`` (``rewards.worker_memory_mb``).
* **Errors** (an exception, a timeout, a wrong-length or non-list result, a None / NaN / inf /
  non-number value) make that (term, sample) score 0 and are recorded. ``on_error="raise"`` stops
  at the first with :class:`RewardError`; ``"count"`` continues unless the step's error rate
  (failed pairs / (terms x samples)) exceeds ``max_error_rate``.
* **Isolation** ``"process"`` (default): terms found by name, entry point or dotted path run in
  worker processes (``num_workers`` per term) that re-import them and call ``fn.warmup()`` if it
  exists; start-up is waited for outside the deadline. A call past the deadline gets its
  worker's whole process group killed and a fresh worker started, so a hung reward leaks
  nothing (sandboxes it started die with it too). Callables passed directly (lambdas, closures)
  cannot be re-imported and run in threads. ``"thread"``: every term runs in threads (for
  rewards that must share the caller's memory, e.g. a model on the GPU). A thread cannot be
  killed: a hung one is abandoned and counted, and once ``max_hung`` abandoned threads of a term
  are still alive the runner refuses that term's calls (errors, so the error-rate check stops the
  run) instead of leaking without bound. ``async def`` rewards are awaited with the deadline and
  cancelled cleanly in both modes.

Not in the paper: V3.2 does not describe its reward infrastructure.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from rewards.backends import Outcome, ProcessBackend, ThreadBackend
from rewards.registry import RewardFn, import_callable, load_reward

# Defaults of the runner, written once (``rl.config.RewardsConfig`` names them).
TIMEOUT_S = 10.0
"""Per-step budget of every reward call, in seconds."""
NUM_WORKERS = 2
"""Calls of one term run at once (worker processes or threads)."""
ON_ERROR = ("count", "raise")
"""What a failed (term, sample) does: score 0 and count it, or stop; the first is the default."""
MAX_ERROR_RATE = 0.5
"""With ``on_error="count"``: the largest tolerated fraction of failed (term, sample) pairs in a step."""
ISOLATION = ("process", "thread")
"""Where rewards run: worker processes (killed at the deadline) or threads; the first is the default."""
MEMORY_MB = 4096
"""Address-space cap (RLIMIT_AS) of each worker process in MB; 0 = none."""


class RewardError(RuntimeError):
    """A reward failed and the run must stop (``on_error="raise"`` or the error rate was exceeded)."""

    def __init__(self, message: str, result: RewardResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class RewardTerm:
    """One weighted term of the total reward."""

    name: str
    """The term's name in logs and results (the config key, e.g. ``correct``)."""
    fn: RewardFn
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments bound to ``fn`` (e.g. ``{"target": 512}``)."""
    spec: tuple[str, str] | None = None
    """``("name", x)`` or ``("target", "pkg.mod.fn")``: how a worker process re-imports ``fn``."""

    @classmethod
    def from_config(cls, term: str, spec: Mapping[str, Any]) -> RewardTerm:
        """From plain config values: ``{"name" | "_target_": ..., "weight": w, "kwargs": {...}}``."""
        unknown = set(spec) - {"name", "_target_", "weight", "kwargs"}
        if unknown:
            raise ValueError(f"reward term {term!r}: unknown keys {sorted(unknown)} "
                             "(allowed: name, _target_, weight, kwargs)")
        name, target = spec.get("name"), spec.get("_target_")  # both optional keys of a term
        try:
            fn = load_reward(name=name, target=target)
        except (KeyError, ImportError, ValueError, TypeError) as e:
            raise ValueError(f"reward term {term!r}: {e.args[0] if e.args else e}") from e
        weight = float(spec["weight"]) if "weight" in spec else 1.0
        if not math.isfinite(weight):
            raise ValueError(f"reward term {term!r}: weight must be finite, got {weight}")
        kind_value = ("name", name) if name is not None else ("target", target)
        return cls(term, fn, weight, dict(spec.get("kwargs") or {}), kind_value)  # type: ignore[arg-type]


def _importable_spec(fn: RewardFn) -> tuple[str, str] | None:
    """A dotted path that imports back to ``fn`` (None for lambdas, closures, bound methods...)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        return ("target", f"{module}:{qualname}") if import_callable(f"{module}:{qualname}") is fn else None
    except Exception:  # noqa: BLE001 - not importable: run it in a thread instead
        return None


def invoke_reward(fn: RewardFn, prompts: list, completions: list, fields: dict[str, list],
                  kwargs: dict[str, Any], timeout_s: float | None) -> Any:
    """Call one reward on one chunk; an ``async`` reward is awaited with ``timeout_s``."""
    out = fn(prompts, completions, **fields, **kwargs)
    if inspect.isawaitable(out):
        async def bounded() -> Any:
            return await asyncio.wait_for(out, timeout=timeout_s)
        out = asyncio.run(bounded())
    return out


@dataclass
class RewardErrorRecord:
    """One failed (term, sample): what failed, why, and the sample (texts cut to 300 chars)."""

    term: str
    index: int
    kind: str
    """``exception``, ``timeout``, ``bad_value`` (None/NaN/inf/not a number), ``bad_output``
    (not a list, or wrong length), ``worker`` (the worker process died or could not start)."""
    reason: str
    prompt: str
    completion: str

    def __str__(self) -> str:
        return (f"term {self.term!r}, sample {self.index}: {self.kind}: {self.reason} "
                f"| completion: {self.completion[:120]!r}")


@dataclass
class RewardResult:
    """Scores of one batch of B samples."""

    totals: list[float]
    """(B,) weighted sum of the terms; a failed term contributes 0."""
    per_term: dict[str, list[float]]
    """term -> (B,) unweighted values, 0.0 where the term failed."""
    ok: dict[str, list[bool]]
    """term -> (B,) False where the term failed on the sample."""
    errors: list[RewardErrorRecord]
    seconds: float
    """Wall-clock time of the scoring."""

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    @property
    def error_rate(self) -> float:
        pairs = sum(len(v) for v in self.ok.values())
        return len(self.errors) / pairs if pairs else 0.0

    def metrics(self) -> dict[str, float]:
        """Scalars to log: ``reward/mean``, ``reward/<term>/mean`` (over samples where the term
        succeeded), ``reward/<term>/errors``, ``reward/errors``, ``reward/timeouts``,
        ``reward/error_rate``, ``reward/seconds``."""
        out = {"reward/mean": sum(self.totals) / len(self.totals) if self.totals else 0.0}
        for term, values in self.per_term.items():
            good = [v for v, ok in zip(values, self.ok[term]) if ok]
            out[f"reward/{term}/mean"] = sum(good) / len(good) if good else 0.0
            out[f"reward/{term}/errors"] = float(self.ok[term].count(False))
        out["reward/errors"] = float(self.num_errors)
        out["reward/timeouts"] = float(sum(e.kind == "timeout" for e in self.errors))
        out["reward/error_rate"] = self.error_rate
        out["reward/seconds"] = self.seconds
        return out


@dataclass
class _Call:
    term: int
    indices: list[int]


def check_values(raw: Any, k: int) -> tuple[str | None, list[float | str]]:
    """Validate a reward's return for a chunk of ``k``: (whole-call problem, per-sample value or problem).

    Never raises: whatever the reward returned (a numpy 0-d array, an int too large for a float,
    an object whose ``__len__``/``__iter__``/``__float__`` raises) becomes a problem text.
    """
    if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__") or not hasattr(raw, "__iter__"):
        return f"returned a {type(raw).__name__}, expected a list of {k} floats", []
    try:
        items = list(raw)
    except Exception as e:  # noqa: BLE001 - e.g. iterating a numpy 0-d array
        return f"returned a {type(raw).__name__} that cannot be read as a list ({type(e).__name__}: {e})", []
    if len(items) != k:
        return f"returned {len(items)} values for {k} samples", []
    out: list[float | str] = []
    for v in items:
        try:
            f = float(v)
        except Exception as e:  # noqa: BLE001 - OverflowError, a raising __float__, ...
            out.append(f"value of type {type(v).__name__} is not a number ({type(e).__name__}: {str(e)[:80]})")
            continue
        out.append(f if math.isfinite(f) else f"value is {f}")
    return None, out


class RewardRunner:
    """Scores batches with weighted reward terms (see the module docstring for the guarantees).

    Args:
        terms: ``{term_name: {"name" | "_target_": ..., "weight": w, "kwargs": {...}}}`` (the
            config's plain values) or a list of :class:`RewardTerm`.
        timeout_s: per-step budget of every reward call (see the module docstring).
        num_workers: calls run at once (worker processes or threads).
        on_error: ``"count"`` (score 0, record, continue) or ``"raise"`` (stop at once).
        max_error_rate: with ``"count"``, stop when a step's failed fraction exceeds this.
        isolation: ``"process"`` or ``"thread"``.
        max_hung: thread mode: abandoned (hung) calls tolerated before refusing new calls.
        startup_timeout_s: how long a worker process may take to import its rewards.
        memory_mb: address-space cap (RLIMIT_AS) of each worker process, in MB; 0 = none
            (``rl.train`` passes ``rewards.worker_memory_mb``). A reward past it gets MemoryError
            (or its worker dies): an error for its samples, not for the trainer.
        error_log: a JSONL file that gets one line per failed (term, sample), with the sample's
            texts and the reason; every step with errors also prints one line to stderr.

    >>> runner = RewardRunner({"len": {"name": "length_penalty", "kwargs": {"target": 2}}},
    ...                       timeout_s=5, num_workers=1, isolation="thread")
    >>> runner.score(["p", "p"], ["ab", "abcd"]).totals
    [0.0, -1.0]
    """

    def __init__(self, terms: Mapping[str, Mapping[str, Any]] | Sequence[RewardTerm], timeout_s: float = TIMEOUT_S,
                 num_workers: int = NUM_WORKERS, on_error: str = ON_ERROR[0], max_error_rate: float = MAX_ERROR_RATE,
                 isolation: str = ISOLATION[0], max_hung: int | None = None,
                 startup_timeout_s: float = 120.0, memory_mb: int = MEMORY_MB, error_log: str | None = None) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if isolation not in ISOLATION:
            raise ValueError(f"isolation must be one of {ISOLATION}, got {isolation!r}")
        if not timeout_s > 0 or num_workers < 1 or not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"need timeout_s > 0, num_workers >= 1, 0 <= max_error_rate <= 1 (got "
                             f"{timeout_s}, {num_workers}, {max_error_rate})")
        if isinstance(terms, Mapping):
            self.terms = [RewardTerm.from_config(name, spec) for name, spec in terms.items()]
        else:
            self.terms = list(terms)
        if len({t.name for t in self.terms}) != len(self.terms):
            raise ValueError(f"reward term names must be unique: {[t.name for t in self.terms]}")
        self.timeout_s, self.on_error, self.max_error_rate = timeout_s, on_error, max_error_rate
        self.isolation = isolation
        specs = {t.name: t.spec or _importable_spec(t.fn) for t in self.terms} if isolation == "process" else {}
        in_process = {name: spec for name, spec in specs.items() if spec is not None}
        # Per term too: a term whose hung threads reach max_hung is refused, the others go on.
        self._threads = {t.name: ThreadBackend(num_workers, max_hung if max_hung is not None else 2 * num_workers)
                         for t in self.terms if t.name not in in_process}
        # One pool of worker processes per term, so a hanging term never holds up the others.
        if memory_mb < 0:
            raise ValueError(f"memory_mb must be >= 0 (0 = no cap), got {memory_mb}")
        self.error_log = error_log
        self._step = 0
        self._procs = {name: ProcessBackend(num_workers, {name: spec}, startup_timeout_s, memory_mb)
                       for name, spec in in_process.items()}
        self.num_workers, self.memory_mb = num_workers, memory_mb
        for t in self.terms:  # rewards that run here: do their slow set-up now, not in step 1
            warmup = getattr(t.fn, "warmup", None)
            if t.name not in self._procs and callable(warmup):
                warmup()
        self._submitter: ThreadPoolExecutor | None = None
        self._score_lock = threading.Lock()

    # -- public API -------------------------------------------------------------------------

    def score(self, prompts: Sequence[Any], completions: Sequence[str],
              fields: Mapping[str, Sequence[Any]] | None = None) -> RewardResult:
        """Score B samples. ``fields``: name -> (B,) values (dataset columns, trajectory info).

        Calls from several threads are served one at a time (the workers are shared).
        """
        with self._score_lock:
            return self._score(prompts, completions, fields)

    def _score(self, prompts: Sequence[Any], completions: Sequence[str],
               fields: Mapping[str, Sequence[Any]] | None) -> RewardResult:
        start = time.monotonic()
        prompts, completions = list(prompts), list(completions)
        b = len(completions)
        fields = {k: list(v) for k, v in (fields or {}).items()}
        if len(prompts) != b or any(len(v) != b for v in fields.values()):
            lens = {k: len(v) for k, v in fields.items()}
            raise ValueError(f"score: {len(prompts)} prompts, {b} completions, field lengths {lens}: all must be {b}")
        for t in self.terms:
            clash = set(t.kwargs) & set(fields)
            if clash:
                raise ValueError(f"reward term {t.name!r}: kwargs {sorted(clash)} clash with fields of the same name")
        values = {t.name: [0.0] * b for t in self.terms}
        ok = {t.name: [False] * b for t in self.terms}
        errors: list[RewardErrorRecord] = []
        if b:
            n_chunks = min(self.num_workers, b)
            bounds = [round(j * b / n_chunks) for j in range(n_chunks + 1)]
            calls = [_Call(ti, list(range(bounds[j], bounds[j + 1]))) for ti in range(len(self.terms))
                     for j in range(n_chunks)]
            retry: list[_Call] = []
            for call, outcome in zip(calls, self._execute(calls, prompts, completions, fields)):
                problem = self._record(call, outcome, values, ok, errors, prompts, completions, final=False)
                if problem:
                    retry += [_Call(call.term, [i]) for i in call.indices]
            # Per sample, each with an equal share of a second budget: a sample that hangs is cut
            # at its share and zeroes only itself; the healthy samples of its chunk are scored.
            n_retry = collections.Counter(c.term for c in retry)
            share = {ti: self.timeout_s * self.num_workers / n for ti, n in n_retry.items()}
            for call, outcome in zip(retry, self._execute(retry, prompts, completions, fields, share)):
                self._record(call, outcome, values, ok, errors, prompts, completions, final=True)
        errors.sort(key=lambda e: (e.index, e.term))
        totals = [sum(t.weight * values[t.name][i] for t in self.terms) + 0.0 for i in range(b)]
        result = RewardResult(totals, values, ok, errors, time.monotonic() - start)
        self._step += 1
        self._report(result)
        self._maybe_raise(result)
        return result

    def _report(self, result: RewardResult) -> None:
        """Show a step's errors: one console line, and every error with its sample in ``error_log``."""
        if not result.errors:
            return
        kinds = collections.Counter(e.kind for e in result.errors)
        where = f"; all in {self.error_log}" if self.error_log else ""
        print(f"reward errors in scoring call {self._step}: {result.num_errors} failed (term, sample) "
              f"pair(s) ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); first: "
              f"{result.errors[0]}{where}", file=sys.stderr, flush=True)
        if self.error_log:
            with open(self.error_log, "a", encoding="utf-8", errors="replace") as f:
                f.writelines(json.dumps({"call": self._step, **asdict(e)}, ensure_ascii=True) + "\n" for e in result.errors)

    def submit(self, prompts: Sequence[Any], completions: Sequence[str],
               fields: Mapping[str, Sequence[Any]] | None = None) -> Future[RewardResult]:
        """:meth:`score` in a background thread (to overlap scoring with other work)."""
        if self._submitter is None:
            self._submitter = ThreadPoolExecutor(1, thread_name_prefix="reward-submit")
        return self._submitter.submit(self.score, prompts, completions, fields)

    def close(self) -> None:
        """Stop the worker processes."""
        for backend in self._procs.values():
            backend.close()
        if self._submitter is not None:
            self._submitter.shutdown(wait=False)

    def __enter__(self) -> RewardRunner:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _execute(self, calls: list[_Call], prompts: list, completions: list,
                 fields: dict[str, list], per_call_s: dict[int, float] | None = None) -> list[Outcome]:
        """Run calls on their backends under one deadline; outcomes in call order."""
        if not calls:
            return []
        for backend in self._procs.values():
            backend.prepare()
        deadline = time.monotonic() + self.timeout_s
        outcomes: list[Outcome | None] = [None] * len(calls)
        groups: dict[int, list[int]] = {}
        for j, c in enumerate(calls):
            groups.setdefault(c.term, []).append(j)

        def sliced(c: _Call) -> tuple[list, list, dict[str, list]]:
            return ([prompts[i] for i in c.indices], [completions[i] for i in c.indices],
                    {k: [v[i] for i in c.indices] for k, v in fields.items()})

        def thread_job(c: _Call) -> Callable[[float], Any]:
            term = self.terms[c.term]
            p, comp, f = sliced(c)
            return lambda dl: invoke_reward(term.fn, p, comp, f, term.kwargs, max(0.0, dl - time.monotonic()))

        def run_term(ti: int, positions: list[int]) -> None:
            """All calls of one term, on that term's own workers; returns by the deadline."""
            term = self.terms[ti]
            if term.name in self._procs:
                payloads = [(term.name, term.kwargs, *sliced(calls[j])) for j in positions]
                outs = self._procs[term.name].run(payloads, deadline,  # type: ignore[arg-type]
                                                  (per_call_s or {}).get(ti))
            else:
                outs = self._threads[term.name].run([thread_job(calls[j]) for j in positions], deadline)
            for j, out in zip(positions, outs):
                outcomes[j] = out

        items = list(groups.items())
        helpers = [threading.Thread(target=run_term, args=item, daemon=True) for item in items[1:]]
        for h in helpers:
            h.start()
        run_term(*items[0])
        for h in helpers:
            h.join()
        return [o if o is not None else ("error", "internal: no outcome") for o in outcomes]

    def _record(self, call: _Call, outcome: Outcome, values: dict, ok: dict, errors: list,
                prompts: list, completions: list, final: bool) -> bool:
        """Store a call's values or errors; True when the call should be retried per sample."""
        term = self.terms[call.term]
        status, payload = outcome
        if status in ("ok", "checked"):  # "checked": a worker already ran check_values (plain data)
            problem, per_sample = payload if status == "checked" else check_values(payload, len(call.indices))
            if problem is None:
                for i, v in zip(call.indices, per_sample):
                    if isinstance(v, str):
                        errors.append(self._error(term.name, i, "bad_value", v, prompts, completions))
                    else:
                        values[term.name][i], ok[term.name][i] = v, True
                return False
            kind, reason = "bad_output", problem
        elif status == "timeout":
            kind, reason = "timeout", f"{payload} (timeout_s={self.timeout_s})"
            # A hung thread cannot be killed: retrying would leak more. Worker processes are killed,
            # so their chunk is retried per sample and only the hanging sample scores 0.
            final = final or term.name not in self._procs
        else:
            kind, reason = ("worker" if "worker" in str(payload) else "exception"), str(payload)
        if not final and len(call.indices) > 1:
            return True
        if len(call.indices) > 1:
            reason += f" (on a chunk of {len(call.indices)} samples)"
        for i in call.indices:
            errors.append(self._error(term.name, i, kind, reason, prompts, completions))
        return False

    @staticmethod
    def _error(term: str, i: int, kind: str, reason: str, prompts: list, completions: list) -> RewardErrorRecord:
        return RewardErrorRecord(term, i, kind, reason, str(prompts[i])[:300], str(completions[i])[:300])

    def _maybe_raise(self, result: RewardResult) -> None:
        if not result.errors:
            return
        first = "; ".join(str(e) for e in result.errors[:3])
        if self.on_error == "raise":
            raise RewardError(f"reward failed ({result.num_errors} error(s), on_error='raise'): {first}", result)
        if result.error_rate > self.max_error_rate:
            raise RewardError(f"reward error rate {result.error_rate:.2f} exceeds max_error_rate "
                              f"{self.max_error_rate} ({result.num_errors} failed (term, sample) pairs); "
                              f"first: {first}", result)
