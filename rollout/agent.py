"""The multi-turn tool-use loop: generate, parse tool calls, step the environment, repeat.

``run_agent(engine, tasks, params, config)`` plays one episode per task, batching the episodes'
turns into one ``engine.generate`` call per round (any engine-shaped object: ``tokenizer``,
``weight_version`` and ``generate(prompt_token_id_lists, params, seed=) -> list[Trajectory]``).

Per episode: the opening prompt is the chat template of the environment's system + user messages
and tools, ending in ``<|assistant|>``. Each round samples one assistant turn (up to ``<|end|>``,
``params.max_new_tokens`` tokens). Its text is parsed (``envs.base.parse_turn``, never raises); a
turn with tool calls is answered by ``env.step``, each result appended as ``<|tool|>RESULT<|end|>``,
then ``<|assistant|>`` for the next turn; a turn without tool calls is the answer (``env.finish``);
a submit tool call also ends the episode. The episode also ends at ``max_turns`` policy turns
(reason ``turns``) or when the context is full (``context``).

ONE :class:`~rollout.types.Trajectory` per episode. Its tokens are the concatenation of the
prompt, the *sampled ids verbatim* (never re-tokenised: decoding and re-encoding policy text can
give other ids, and the trainer must score the ids that were sampled) and the environment's
tokens (the template's markers and tool results, encoded by the tokenizer). ``loss_mask`` is True
exactly on the sampled ids; logprobs and kept sets come from the call that sampled each token;
MoE routes / DSA selections of a position come from the call that first processed it (the prefill
of the next call for environment tokens). The trajectory ends at the last sampled token.

V3.2's thinking rule: reasoning is dropped only when a new *user* message arrives. An episode has
one user message, so nothing is dropped: tool results keep every earlier ``<think>`` in context
(the sampled ids stay as they are). ``rl.policy.tokenizer``'s template applies the same rule when
a conversation with several user messages is rendered.

Context management (V3.2: at 80% of the window, discard older tool history): before a turn, when
the context holds >= ``context_fraction`` of the window, the oldest tool outputs are replaced by
``dropped_text`` one by one until it fits. Departure forced by one-trajectory training: tokens
sampled before such a drop were conditioned on a context the trajectory no longer holds, so they
stay as context with loss mask False (their count is ``info["unmasked_by_drop"]``); only tokens
sampled under exactly the stored prefix are trained on.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from envs.base import TOOL_SCHEMAS, Environment, compact_tools, parse_turn
from rollout.params import AgentConfig
from rollout.sampling import SamplingParams
from rollout.types import Trajectory


class TokenEngine(Protocol):
    """What the loop needs of an engine (``rollout.engine.RolloutEngine`` is one)."""

    tokenizer: Any
    weight_version: int

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 seed: int | None = None) -> list[Trajectory]: ...


@dataclass
class _Episode:
    env: Any
    task: Any
    ids: list[int]
    prompt_len: int
    loss: list[bool] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    """Chunks of (n, ceil(V/8)) uint8 kept sets, aligned with ids (zeros off the policy)."""
    routes: list[torch.Tensor] = field(default_factory=list)
    topk: list[torch.Tensor] = field(default_factory=list)
    covered: int = 0
    """Leading positions whose routes / selections are recorded (and trajectory length)."""
    tool_spans: list[tuple[int, int]] = field(default_factory=list)
    """[start, end) of each tool output's content tokens, oldest first, not yet dropped."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    calls: int = 0
    errors: int = 0
    dropped: int = 0
    unmasked: int = 0
    reward: float = 0.0
    answer: Any = None
    last_text: str = ""
    finish: str | None = None


def _window(engine: Any, cfg: AgentConfig) -> int:
    if cfg.context_window:
        return cfg.context_window
    ecfg = getattr(engine, "config", None)
    if getattr(ecfg, "max_seq_len", None):
        return int(ecfg.max_seq_len)
    model = getattr(engine, "model", None)
    if model is not None:
        return int(model.config.max_position_embeddings)
    raise ValueError("AgentConfig.context_window is unset and the engine states no context limit")


def _enc(tok: Any, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def run_agent(engine: TokenEngine, tasks: Sequence[Any], params: SamplingParams, config: AgentConfig | None = None,
              *, make_env: Callable[..., Environment] | None = None, seed: int | None = None,
              prompt_indices: Sequence[int] | None = None,
              sample_indices: Sequence[int] | None = None) -> list[Trajectory]:
    """Play one episode per task; returns one trajectory per task, in order.

    make_env: ``make_env(task, timeout_s=, max_result_chars=)`` -> an ``envs.base.Environment``
    (default ``envs.registry.make_env``). seed: round r calls ``generate`` with ``seed + r`` (None: the
    engine's own generator). The reward is ``info["env_reward"]`` (read by ``env_verifier``).
    """
    if make_env is None:
        from envs.registry import make_env
    cfg = config or AgentConfig()
    if cfg.tool_schema not in TOOL_SCHEMAS:
        raise ValueError(f"tool_schema={cfg.tool_schema!r}: allowed {', '.join(map(repr, TOOL_SCHEMAS))}")
    tok = engine.tokenizer
    window = _window(engine, cfg)
    end_ids = _enc(tok, tok.eos_token)
    eps = []
    for task in tasks:
        env = make_env(task, timeout_s=cfg.tool_timeout_s, max_result_chars=cfg.max_result_chars)
        obs = env.reset(task)
        tools = compact_tools(obs.tools) if cfg.tool_schema == "compact" else obs.tools
        text = tok.apply_chat_template(obs.messages, tools=tools, tokenize=False, add_generation_prompt=True)
        ids = _enc(tok, text)
        eps.append(_Episode(env, task, ids, len(ids), [False] * len(ids), [0.0] * len(ids),
                            messages=list(obs.messages)))
    version = engine.weight_version
    rnd = 0
    while True:
        active = [e for e in eps if e.finish is None]
        for e in active:
            if e.turns >= cfg.max_turns:
                e.finish = "turns"
            elif not _fit_context(e, tok, window, cfg):
                e.finish = "context"
        active = [e for e in active if e.finish is None]
        if not active:
            break
        outs = engine.generate([e.ids for e in active], params, seed=None if seed is None else seed + rnd)
        rnd += 1
        turns = []
        for e, out in zip(active, outs):
            if out.weight_version != version:
                raise RuntimeError(f"weights changed mid-episode (version {version} -> {out.weight_version})")
            turns.append(_absorb(e, out, tok))
        # Environments step concurrently (tools such as the sandbox wait on subprocesses).
        stepping = [(e, t) for e, t in zip(active, turns) if t is not None]
        if len(stepping) > 1 and cfg.tool_workers > 1:
            with ThreadPoolExecutor(min(cfg.tool_workers, len(stepping))) as pool:
                results = list(pool.map(lambda et: _step(*et), stepping))
        else:
            results = [_step(e, t) for e, t in stepping]
        for (e, t), res in zip(stepping, results):
            _append_results(e, t, res, tok, end_ids)
    return [_trajectory(e, tok, version, i, prompt_indices, sample_indices) for i, e in enumerate(eps)]


def _fit_context(e: _Episode, tok: Any, window: int, cfg: AgentConfig) -> bool:
    """Drop the oldest tool outputs while the context is over the threshold; False if it is full."""
    limit = cfg.context_fraction * window
    if len(e.ids) >= limit and e.tool_spans:
        drop = _enc(tok, cfg.dropped_text)
        ids, loss, logp = list(e.ids), list(e.loss), list(e.logp)
        spans = list(e.tool_spans)
        n = 0
        while len(ids) >= limit and spans:
            a, b = spans.pop(0)
            ids[a:b], loss[a:b], logp[a:b] = drop, [False] * len(drop), [0.0] * len(drop)
            shift = len(drop) - (b - a)
            spans = [(x + shift, y + shift) for x, y in spans]
            n += 1
        if len(ids) < window:  # commit: everything sampled before is context now, not trained on
            e.unmasked += sum(loss)
            e.ids, e.loss, e.logp = ids, [False] * len(ids), [0.0] * len(ids)
            e.tool_spans, e.dropped = spans, e.dropped + n
            e.masks = [m.new_zeros((len(ids), m.shape[-1])) for m in e.masks[:1]]
            e.routes, e.topk, e.covered = [], [], 0
    return len(e.ids) < window


def _absorb(e: _Episode, out: Trajectory, tok: Any) -> Any:
    """Append one sampled turn and parse it; returns the parsed turn when the environment must
    be stepped, None when the episode ended (context full)."""
    ctx = len(e.ids)
    new = out.tokens[out.prompt_len:].tolist()
    e.ids += new
    e.loss += [True] * len(new)
    e.logp += out.logprobs[out.prompt_len:].tolist()
    gap = ctx - sum(m.shape[0] for m in e.masks)  # environment tokens since the last record
    if out.sampling_mask is not None:
        width = out.sampling_mask.shape[-1]
        e.masks.append(torch.zeros(gap, width, dtype=torch.uint8))
        e.masks.append(out.sampling_mask[out.prompt_len:])
    if out.expert_routes is not None:
        e.routes.append(out.expert_routes[e.covered:])
    if out.topk_indices is not None:
        e.topk.append(out.topk_indices[e.covered:])
    e.covered = len(e.ids)
    e.turns += 1
    text = tok.decode(new, skip_special_tokens=True)
    e.last_text = text
    turn = parse_turn(text)
    msg: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if turn.reasoning:
        msg["reasoning_content"] = turn.reasoning
    if turn.calls:
        msg["tool_calls"] = [c.to_message() for c in turn.calls]
    e.messages.append(msg)
    if out.finish_reason == "context":
        e.finish = "context"
        return None
    return turn


def _step(e: _Episode, turn: Any) -> Any:
    """The environment's answer to a turn: ``step`` its calls, or ``finish`` a text answer."""
    return e.env.step(turn.calls) if turn.calls else e.env.finish(turn.content)


def _append_results(e: _Episode, turn: Any, res: Any, tok: Any, end_ids: list[int]) -> None:
    """Record the step's outcome and append its results as ``<|tool|>`` turns (loss mask False)."""
    if not turn.calls:
        e.reward, e.answer, e.finish = res.reward, res.info.get("answer"), "stop"
        return
    e.calls += len(turn.calls)
    e.errors += res.num_errors
    if e.ids[-1] not in end_ids:  # cut off by max_new_tokens: close the turn
        e.ids += end_ids
    for obs in res.observations:
        # An environment's text may carry a lone surrogate (from a \\u escape the policy wrote): no
        # tokenizer encodes it, so it becomes U+FFFD-free "?" here instead of failing the rollout.
        obs = str(obs).encode("utf-8", "replace").decode("utf-8")
        head = _enc(tok, "<|tool|>")
        body = _enc(tok, obs)
        start = len(e.ids) + len(head)
        e.ids += head + body + end_ids
        e.tool_spans.append((start, start + len(body)))
        e.messages.append({"role": "tool", "content": obs})
    e.ids += _enc(tok, "<|assistant|>")
    pad = len(e.ids) - len(e.loss)
    e.loss += [False] * pad
    e.logp += [0.0] * pad
    if res.done:
        e.reward, e.answer, e.finish = res.reward, res.info.get("answer"), "stop"


def _trajectory(e: _Episode, tok: Any, version: int, i: int, prompt_indices, sample_indices) -> Trajectory:
    # Ends at the last sampled token (later environment text trains nothing); an episode that
    # never sampled (prompt over the window) is its prompt, as the engine's empty continuation.
    n = e.covered or e.prompt_len
    tokens = torch.tensor(e.ids[:n], dtype=torch.long)
    traj = Trajectory(
        tokens=tokens, prompt_len=min(e.prompt_len, n),
        loss_mask=torch.tensor(e.loss[:n], dtype=torch.bool),
        logprobs=torch.tensor(e.logp[:n], dtype=torch.float32),
        completion=e.last_text, finish_reason=e.finish or "turns", weight_version=version,
        prompt_index=prompt_indices[i] if prompt_indices is not None else i,
        sample_index=sample_indices[i] if sample_indices is not None else 0,
        num_turns=e.turns, num_tool_calls=e.calls, num_tool_errors=e.errors,
        info={"env_reward": float(e.reward), "env_id": getattr(e.task, "env_id", None),
              "family": getattr(e.task, "family", None), "difficulty": getattr(e.task, "difficulty", None),
              "answer": e.answer, "dropped_tool_outputs": e.dropped, "unmasked_by_drop": e.unmasked,
              "messages": e.messages})
    if e.masks:
        m = torch.cat(e.masks)[:n]
        traj.sampling_mask = torch.cat([m, m.new_zeros((n - m.shape[0], m.shape[-1]))])
    if e.routes:
        traj.expert_routes = torch.cat(e.routes)[:n]
    if e.topk:
        traj.topk_indices = torch.cat(e.topk)[:n]
    return traj


def agent_solver(engine: TokenEngine, params: SamplingParams, config: AgentConfig | None = None,
                 seed: int | None = 0) -> Callable[[Sequence[Any], int], list[list[float]]]:
    """A ``envs.synth.pipeline.Solver``: K tries of each task through :func:`run_agent`."""

    def solve(tasks: Sequence[Any], k: int) -> list[list[float]]:
        trajs = run_agent(engine, [t for t in tasks for _ in range(k)], params, config, seed=seed)
        r = [t.info["env_reward"] for t in trajs]
        return [r[i * k:(i + 1) * k] for i in range(len(tasks))]

    return solve
