"""The environment protocol, tool schemas, the tool-call parser and a generic tool environment.

An episode: ``env.reset(task)`` gives the opening :class:`Observation` (system + user messages and
the tool list in OpenAI function-calling form); the policy answers; each policy turn's text is
parsed by :func:`parse_turn` into reasoning, content and :class:`ToolCall` s; ``env.step(calls)``
runs the calls and returns a :class:`StepResult` with one result text per call (the ``<|tool|>``
turns the model reads next), the reward and ``done``. A turn without tool calls is the final
answer: ``env.finish(text)`` verifies it. Calling the environment's submit tool also ends it.

The parser never raises: malformed markup, bad JSON, a missing name or non-object arguments become
a :class:`ToolCall` with ``error`` set, and :class:`ToolEnv` turns it into an error result the model
can read (``Error: ...``), as unknown tools, bad arguments, tool exceptions and timeouts are.

Departures from V3.2: the tool-call markup is this project's chat template (see
``rl.policy.tokenizer``), not DeepSeek's DSML; tool timeouts run the tool in a daemon thread that
is abandoned (not killed) past its limit, so tools must be pure functions of the task's data (the
sandboxed ``python`` tool enforces its own wall limit in a separate process).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_CALLS_PER_TURN = 8
"""Tool calls beyond this many in one turn are answered with an error (and not run)."""


# ---- tool schemas --------------------------------------------------------------------------------
TOOL_TIMEOUT_S = 5.0
"""Default per-tool-call timeout in seconds (a tool's ``ToolSpec.timeout_s`` overrides it)."""
MAX_RESULT_CHARS = 2000
"""Default truncation of a tool result, in characters."""
TOOL_SCHEMAS = ("openai", "compact")
"""How tools are shown in the prompt: full OpenAI function schemas, or :func:`compact_tools`; the
first is the default."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, description and JSON-schema parameters (OpenAI function form)."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float | None = None
    """Per-tool timeout; None = the environment's default."""

    def to_openai(self) -> dict[str, Any]:
        """``{"type": "function", "function": {"name", "description", "parameters"}}``."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def params(required: Sequence[str] = (), **props: str | tuple[str, str]) -> dict[str, Any]:
    """JSON-schema object from ``name="type"`` or ``name=("type", "description")`` keywords."""
    properties = {}
    for k, v in props.items():
        typ, desc = (v, "") if isinstance(v, str) else v
        properties[k] = {"type": typ, **({"description": desc} if desc else {})}
    return {"type": "object", "properties": properties, "required": list(required)}


def compact_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool schemas shrunk to ``{"name": ..., "arguments": {arg: type}}`` (about a fifth of
    the prompt tokens; for small models on short contexts)."""
    out = []
    for t in tools:
        f = t.get("function", t)
        props = f.get("parameters", {}).get("properties", {})
        out.append({"name": f["name"], "arguments": {k: v.get("type", "any") for k, v in props.items()}})
    return out


def check_arguments(spec: ToolSpec, args: dict[str, Any]) -> str | None:
    """Why ``args`` do not fit ``spec`` (missing required, unknown or wrongly typed), or None."""
    props = spec.parameters.get("properties", {})
    missing = [k for k in spec.parameters.get("required", []) if k not in args]
    if missing:
        return f"missing required argument(s) {', '.join(missing)} for {spec.name}"
    unknown = [k for k in args if k not in props]
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)} for {spec.name}; allowed: {', '.join(props) or 'none'}"
    kinds = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
             "object": (dict,), "array": (list,)}
    for k, v in args.items():
        want = kinds.get(props[k].get("type", ""), (object,))
        if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
            return f"argument {k!r} of {spec.name} must be of type {props[k].get('type')}"
    return None


# ---- parsing -------------------------------------------------------------------------------------
@dataclass
class ToolCall:
    """One parsed call. ``error`` is set (and name/arguments may be empty) when it was malformed."""

    name: str
    arguments: dict[str, Any]
    raw: str = ""
    error: str | None = None

    def to_message(self) -> dict[str, Any]:
        """OpenAI form (what the chat template renders)."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ParsedTurn:
    """A policy turn split into its parts."""

    reasoning: str | None
    content: str
    calls: list[ToolCall]


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The markup the chat template renders for one call (byte-identical to the template)."""
    return f'{CALL_OPEN}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": ' \
           f'{json.dumps(arguments, ensure_ascii=False)}}}{CALL_CLOSE}'


def format_turn(reasoning: str | None, content: str, calls: Sequence[tuple[str, dict[str, Any]]] = ()) -> str:
    """Assistant text (without the role tag and ``<|end|>``) as the chat template renders it."""
    head = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}" if reasoning else ""
    return head + content + "".join(format_tool_call(n, a) for n, a in calls)


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string in a decoded JSON value (keys included) holds a lone surrogate."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _parse_call(raw: str) -> ToolCall:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return ToolCall("", {}, raw, f"tool call is not valid JSON ({type(e).__name__}: {str(e)[:80]})")
    if not isinstance(obj, dict):
        return ToolCall("", {}, raw, 'tool call must be a JSON object {"name": ..., "arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall("", {}, raw, 'tool call has no "name" string')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return ToolCall(name, {}, raw, f'"arguments" of {name} is a string that is not valid JSON')
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ToolCall(name, {}, raw, f'"arguments" of {name} must be a JSON object')
    if _has_lone_surrogate(obj):
        return ToolCall("", {}, raw, "tool call contains a \\u escape of a lone surrogate "
                        "(half of a UTF-16 pair), which is not text; escape whole characters")
    extra = sorted(set(obj) - {"name", "arguments"})
    if extra:
        return ToolCall(name, args, raw, f"tool call has unexpected keys {extra}")
    return ToolCall(name, args, raw)


def parse_turn(text: str) -> ParsedTurn:
    """Split a decoded policy turn into reasoning, content and tool calls. Never raises.

    Reasoning is the text of a leading ``<think>...</think>`` (an unclosed one makes the whole turn
    reasoning). Every ``<tool_call>...</tool_call>`` becomes a :class:`ToolCall`; an unclosed one, a
    stray ``</tool_call>`` and more than :data:`MAX_CALLS_PER_TURN` calls become calls with
    ``error`` set. Content is the remaining text, stripped.
    """
    try:
        return _parse_turn(text)
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"
        return ParsedTurn(None, "", [ToolCall("", {}, text[:200], f"unparseable turn ({type(e).__name__})")])


def _parse_turn(text: str) -> ParsedTurn:
    text = text if isinstance(text, str) else str(text)
    reasoning = None
    rest = text
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN):]
        end = body.find(THINK_CLOSE)
        if end < 0:
            return ParsedTurn(body, "", [])
        reasoning, rest = body[:end], body[end + len(THINK_CLOSE):]
    content, calls = [], []
    pos = 0
    # Next marker positions, searched again only once passed: each scan starts where the last one
    # found its marker, so the whole turn is read a bounded number of times (linear, not quadratic).
    nxt_open, nxt_close = -2, -2

    def find_open(at: int) -> int:
        nonlocal nxt_open
        if nxt_open != -1 and nxt_open < at:
            nxt_open = rest.find(CALL_OPEN, at)
        return nxt_open

    def find_close(at: int) -> int:
        nonlocal nxt_close
        if nxt_close != -1 and nxt_close < at:
            nxt_close = rest.find(CALL_CLOSE, at)
        return nxt_close

    while True:
        i = find_open(pos)
        j = find_close(pos)
        if j >= 0 and (i < 0 or j < i):  # a close without an open
            content.append(rest[pos:j])
            calls.append(ToolCall("", {}, "", f"stray {CALL_CLOSE} without {CALL_OPEN}"))
            pos = j + len(CALL_CLOSE)
            continue
        if i < 0:
            content.append(rest[pos:])
            break
        content.append(rest[pos:i])
        start = i + len(CALL_OPEN)
        end = find_close(start)
        nxt = find_open(start)
        if end < 0 or (0 <= nxt < end):
            stop = nxt if nxt >= 0 else len(rest)
            calls.append(ToolCall("", {}, rest[start:stop], f"unclosed {CALL_OPEN} (no {CALL_CLOSE})"))
            pos = stop
            if nxt < 0:
                break
            continue
        calls.append(_parse_call(rest[start:end]))
        pos = end + len(CALL_CLOSE)
    for c in calls[MAX_CALLS_PER_TURN:]:
        c.error = c.error or f"more than {MAX_CALLS_PER_TURN} tool calls in one turn; this one was not run"
    return ParsedTurn(reasoning, "".join(content).strip(), calls)


# ---- protocol ------------------------------------------------------------------------------------
@dataclass
class Observation:
    """What the policy sees first: chat messages (system, user) and the tools (OpenAI form)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]


@dataclass
class StepResult:
    """Outcome of one ``step``: one result text per call, in order."""

    observations: list[str]
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)
    num_errors: int = 0
    """Calls among these that failed (malformed, unknown tool, bad arguments, exception, timeout)."""


@runtime_checkable
class Environment(Protocol):
    """A tool environment (one episode at a time)."""

    def reset(self, task: Any) -> Observation: ...

    def step(self, calls: Sequence[ToolCall]) -> StepResult: ...

    def finish(self, answer: str) -> StepResult:
        """The policy answered in text (no tool call): verify and end the episode."""
        ...


class ToolTimeout(Exception):
    pass


def call_with_timeout(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
    """``fn(**kwargs)`` in a daemon thread; raises :class:`ToolTimeout` past ``timeout_s`` (the
    thread is abandoned) and re-raises the tool's own exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(**kwargs)
        except BaseException as e:  # noqa: BLE001 - forwarded to the caller
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise ToolTimeout(f"timed out after {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class ToolError(Exception):
    """Raised by a tool for a user-level error (bad id, ...); the message is shown to the model."""


class ToolEnv:
    """Generic environment over named tools; subclasses give ``tools()``, ``verify()``, prompts.

    ``submit_tool`` (if any) ends the episode: its arguments are the answer passed to ``verify``.
    Results are JSON (``json.dumps`` of the tool's return value) or ``Error: ...`` text, truncated
    to ``max_result_chars``.
    """

    family: str = ""
    submit_tool: str = "submit_result"
    system_prompt: str = ("You are an agent. Use the tools to gather what you need, then call "
                          "submit_result with your answer.")

    def __init__(self, timeout_s: float = TOOL_TIMEOUT_S, max_result_chars: int = MAX_RESULT_CHARS) -> None:
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self.task: Any = None
        self.done = False
        self.calls = 0
        self.errors = 0

    # subclass API
    def tools(self) -> dict[str, tuple[ToolSpec, Callable[..., Any]]]:
        raise NotImplementedError

    def verify(self, answer: dict[str, Any]) -> float:
        """Reward in [0, 1] for the submitted arguments (or ``{"answer": text}`` for a text answer)."""
        raise NotImplementedError

    # protocol
    def reset(self, task: Any) -> Observation:
        self.task, self.done, self.calls, self.errors = task, False, 0, 0
        every = self.tools()
        names = list(getattr(task, "tools", None) or every)
        if self.submit_tool in every and self.submit_tool not in names:
            names.append(self.submit_tool)
        self._tools = {n: every[n] for n in names if n in every}
        msgs = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": task.prompt}]
        return Observation(msgs, [spec.to_openai() for spec, _ in self._tools.values()])

    def step(self, calls: Sequence[ToolCall]) -> StepResult:
        obs, errors, reward, done, info = [], 0, 0.0, False, {}
        for call in calls:
            self.calls += 1
            if done:
                obs.append(f"Error: the episode already ended with {self.submit_tool}; call not run")
                errors += 1
                continue
            text, ok = self._run(call)
            errors += not ok
            if ok and call.name == self.submit_tool:
                reward, done = float(self.verify(call.arguments)), True
                info["answer"] = call.arguments
            obs.append(text)
        self.errors += errors
        self.done = done
        return StepResult(obs, reward, done, info, errors)

    def finish(self, answer: str) -> StepResult:
        self.done = True
        try:
            reward = float(self.verify({"answer": answer.strip()}))
        except Exception:  # noqa: BLE001 - a malformed text answer scores 0
            reward = 0.0
        return StepResult([], reward, True, {"answer": answer.strip()})

    def _run(self, call: ToolCall) -> tuple[str, bool]:
        if call.error:
            return f"Error: {call.error}", False
        if call.name not in self._tools:
            return f"Error: unknown tool {call.name!r}; available: {', '.join(self._tools)}", False
        spec, fn = self._tools[call.name]
        bad = check_arguments(spec, call.arguments)
        if bad:
            return f"Error: {bad}", False
        if call.name == self.submit_tool:
            return "Submitted.", True
        try:
            value = call_with_timeout(fn, call.arguments, spec.timeout_s or self.timeout_s)
        except ToolTimeout as e:
            return f"Error: {call.name} {e}", False
        except ToolError as e:
            return f"Error: {e}", False
        except Exception as e:  # noqa: BLE001 - a tool bug must not end the rollout
            return f"Error: {call.name} failed ({type(e).__name__}: {str(e)[:200]})", False
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > self.max_result_chars:
            text = text[: self.max_result_chars] + " ...[truncated]"
        return text, True
