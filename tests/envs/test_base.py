"""envs.base: tool schemas, the never-raising parser (fuzzed), argument checks, timeouts."""
from __future__ import annotations

import json
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from envs.base import (
    MAX_CALLS_PER_TURN,
    ToolCall,
    ToolEnv,
    ToolSpec,
    call_with_timeout,
    check_arguments,
    format_tool_call,
    format_turn,
    params,
    parse_turn,
)
from rl.policy.tokenizer import load_tokenizer

SPEC = ToolSpec("get_hotels", "Hotels in a city.", params(["city"], city=("string", "city name"), n="integer"))


def test_tool_schema_openai_form():
    assert SPEC.to_openai() == {"type": "function", "function": {
        "name": "get_hotels", "description": "Hotels in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"},
                                                         "n": {"type": "integer"}}, "required": ["city"]}}}


def test_check_arguments():
    assert check_arguments(SPEC, {"city": "Rome"}) is None
    assert "missing" in check_arguments(SPEC, {})
    assert "unknown" in check_arguments(SPEC, {"city": "Rome", "x": 1})
    assert "type integer" in check_arguments(SPEC, {"city": "Rome", "n": "3"})
    assert "type integer" in check_arguments(SPEC, {"city": "Rome", "n": True})  # bool is not an integer


def test_format_matches_chat_template():
    tok = load_tokenizer()
    args = {"city": "Zürich", "n": 2, "tags": ["a", "b"]}
    msgs = [{"role": "user", "content": "u"},
            {"role": "assistant", "reasoning_content": "r", "content": "c",
             "tool_calls": [ToolCall("get_hotels", args).to_message()]}]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered.endswith("<|assistant|>" + format_turn("r", "c", [("get_hotels", args)]) + "<|end|>")


def test_parse_well_formed():
    text = format_turn("think", "hello ", [("a", {"x": 1}), ("b", {})])
    t = parse_turn(text)
    assert t.reasoning == "think" and t.content == "hello"
    assert [(c.name, c.arguments, c.error) for c in t.calls] == [("a", {"x": 1}, None), ("b", {}, None)]
    # OpenAI-style string arguments are accepted
    t = parse_turn('<tool_call>{"name": "a", "arguments": "{\\"x\\": 2}"}</tool_call>')
    assert t.calls[0].arguments == {"x": 2} and t.calls[0].error is None
    # no calls: the answer
    t = parse_turn("<think>r</think> 42 ")
    assert (t.reasoning, t.content, t.calls) == ("r", "42", [])


def test_parse_malformed_becomes_errors():
    cases = {
        "<tool_call>{not json}</tool_call>": "not valid JSON",
        "<tool_call>[1, 2]</tool_call>": "JSON object",
        '<tool_call>{"arguments": {}}</tool_call>': "name",
        '<tool_call>{"name": "a", "arguments": [1]}</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "a", "arguments": "{bad"}</tool_call>': "not valid JSON",
        '<tool_call>{"name": "a"': "unclosed",
        '</tool_call>': "stray",
        '<tool_call>{"name": "a", "arguments": {}, "x": 1}</tool_call>': "unexpected keys",
    }
    for text, why in cases.items():
        calls = parse_turn(text).calls
        assert len(calls) == 1 and calls[0].error and why in calls[0].error, (text, calls)
    # an unclosed call followed by a good one: both reported
    t = parse_turn('<tool_call>{"name": "a"<tool_call>{"name": "b", "arguments": {}}</tool_call>')
    assert [c.error is None for c in t.calls] == [False, True] and t.calls[1].name == "b"
    many = "".join(format_tool_call("a", {}) for _ in range(MAX_CALLS_PER_TURN + 2))
    assert sum(c.error is not None for c in parse_turn(many).calls) == 2
    assert parse_turn("<think>never closed").reasoning == "never closed"


class _Echo(ToolEnv):
    family = "echo"

    def tools(self):
        def echo(text: str) -> str:
            return text

        def boom() -> None:
            raise RuntimeError("kaput")

        def slow() -> str:
            time.sleep(2)
            return "late"

        return {"echo": (ToolSpec("echo", "", params(["text"], text="string")), echo),
                "boom": (ToolSpec("boom", ""), boom),
                "slow": (ToolSpec("slow", "", timeout_s=0.1), slow),
                "submit_result": (ToolSpec("submit_result", "", params(["answer"], answer="string")), None)}

    def verify(self, answer):
        return float(answer.get("answer") == "yes")


class _T:
    prompt = "p"
    tools = None


def test_tool_env_errors_are_observations():
    env = _Echo(timeout_s=1.0)
    obs = env.reset(_T())
    assert [t["function"]["name"] for t in obs.tools] == ["echo", "boom", "slow", "submit_result"]
    calls = parse_turn(format_turn(None, "", [("echo", {"text": "hi"}), ("nope", {}), ("echo", {}), ("boom", {}),
                                              ("slow", {})]) + "<tool_call>{x</tool_call>").calls
    t0 = time.perf_counter()
    res = env.step(calls)
    assert time.perf_counter() - t0 < 1.5  # the slow tool's 0.1 s timeout, not its 2 s
    assert res.observations[0] == "hi" and res.num_errors == 5 and not res.done
    assert all(o.startswith("Error:") for o in res.observations[1:])
    assert "unknown tool" in res.observations[1] and "missing" in res.observations[2]
    assert "kaput" in res.observations[3] and "timed out after 0.1 s" in res.observations[4]
    res = env.step([ToolCall("submit_result", {"answer": "yes"}), ToolCall("echo", {"text": "x"})])
    assert res.done and res.reward == 1.0 and res.num_errors == 1  # nothing runs after the submit
    env.reset(_T())
    assert env.finish("no").reward == 0.0


def test_call_with_timeout():
    assert call_with_timeout(lambda x: x + 1, {"x": 1}, 1.0) == 2


_markup = st.sampled_from(["<tool_call>", "</tool_call>", "<think>", "</think>", "{", "}", '"name"', '"arguments"',
                           ":", ",", '"', "[", "]", "null", "1", "\\", "<|end|>", " "])
_junk = st.lists(st.one_of(_markup, st.text(max_size=6)), max_size=40).map("".join)


def _json_like():
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5))
    return st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c,
                                                                                             max_size=3)), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_junk)
def test_parser_fuzz_junk(text):
    t = parse_turn(text)
    assert isinstance(t.content, str)
    for c in t.calls:
        assert isinstance(c.name, str) and isinstance(c.arguments, dict)
        assert c.error is None or isinstance(c.error, str)
    # a bad call never crashes an environment either: it becomes an error observation
    env = _Echo()
    env.reset(_T())
    res = env.step(t.calls)
    assert len(res.observations) == len(t.calls)


@settings(max_examples=200, deadline=None)
@given(_json_like(), st.booleans())
def test_parser_fuzz_json_payloads(obj, wrap):
    payload = json.dumps({"name": "echo", "arguments": obj}) if wrap else json.dumps(obj)
    t = parse_turn(f"<think>x</think><tool_call>{payload}</tool_call>")
    assert len(t.calls) == 1
    c = t.calls[0]
    ok = wrap and (isinstance(obj, dict) or obj is None)
    if isinstance(obj, str) and wrap:  # string arguments parse as JSON or fail cleanly
        ok = c.error is None
    assert (c.error is None) == ok, (payload, c)


def test_every_synthesized_family_makes_an_environment():
    """``make_env`` returns what the agent loop's contract (``envs.base.Environment``) asks for."""
    from envs.base import Environment
    from envs.registry import family_names, get_family, make_env

    for name in family_names():
        family = get_family(name)
        rng = random.Random(0)
        task = family.compose(family.build_database(rng), rng, family.min_level)
        assert isinstance(make_env(task), Environment), name


def test_lone_surrogates_become_call_errors():
    from envs.base import parse_turn
    for raw in ('{"name": "f", "arguments": {"\\udcff": 1}}', '{"name": "f", "arguments": {"a": "\\ud800"}}',
                '{"name": "f\\udfff", "arguments": {}}'):
        (call,) = parse_turn(f"<tool_call>{raw}</tool_call>").calls
        assert call.error and "surrogate" in call.error, (raw, call)
        call.error.encode("utf-8")  # the error text itself is valid text
    (ok,) = parse_turn('<tool_call>{"name": "f", "arguments": {"a": "\\ud83d\\ude00"}}</tool_call>').calls
    assert ok.error is None and ok.arguments == {"a": "\U0001F600"}  # a proper pair is fine


def test_parse_turn_is_linear_in_repeated_markers():
    import time

    from envs.base import parse_turn

    def seconds(text: str) -> float:  # best of 3: a shared machine's load only adds time
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            turn = parse_turn(text)
            best = min(best, time.perf_counter() - start)
        assert turn.calls and all(c.error and "unparseable" not in c.error for c in turn.calls)
        return best
    for unit in ("<tool_call>", "</tool_call>", "<tool_call>x"):
        small, big = seconds(unit * 20_000), seconds(unit * 80_000)  # ~1 MB: 39 s when quadratic
        assert big < 10 * small + 0.3, (unit, small, big)  # 4x the text: ~4-6x the time, not 16x
