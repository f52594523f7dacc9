"""rollout.agent: the multi-turn loop with scripted policies and with the real tiny DSA policy."""
from __future__ import annotations

import pytest
import torch

from envs.base import format_turn
from envs.synth.pipeline import synthesize
from rewards.sandbox import sandbox_support
from rl.policy.tokenizer import load_tokenizer
from rollout.agent import AgentConfig, agent_solver, run_agent
from rollout.sampling import SamplingParams
from rollout.scripted import ScriptedEngine, demonstrations, no_tool_policy, reference_policy

PARAMS = SamplingParams(max_new_tokens=2048)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tasks():
    ts, _ = synthesize(40, seed=5)
    if not sandbox_support()[0]:  # the code family's python tool needs the sandbox
        ts = [t for t in ts if t.family != "code"]
    return ts


def _spans(tok, ids):
    """[start, end) of every assistant turn's body (after <|assistant|>, through <|end|>)."""
    a, e = tok.convert_tokens_to_ids("<|assistant|>"), tok.eos_token_id
    out, start = [], None
    for i, t in enumerate(ids):
        if t == a:
            start = i + 1
        elif t == e and start is not None:
            out.append((start, i + 1))
            start = None
    return out


def test_reference_policy_scores_100_percent(tok, tasks):
    trajs = run_agent(ScriptedEngine(tok, reference_policy(tasks)), tasks, PARAMS, AgentConfig(max_turns=16))
    assert [t.info["env_reward"] for t in trajs] == [1.0] * len(tasks)
    assert all(t.finish_reason == "stop" and t.num_tool_errors == 0 for t in trajs)
    for t, task in zip(trajs, tasks):
        assert t.num_turns == t.num_tool_calls == len(task.reference)
        assert t.info["env_id"] == task.env_id and t.info["answer"] == task.reference[-1]["arguments"]
    assert {t.info["family"] for t in trajs} >= {"trip", "lookup", "search"}


def test_no_tool_policy_scores_near_zero(tok, tasks):
    trajs = run_agent(ScriptedEngine(tok, no_tool_policy("42")), tasks, PARAMS)
    assert sum(t.info["env_reward"] for t in trajs) / len(trajs) <= 0.05
    assert all(t.num_turns == 1 and t.num_tool_calls == 0 for t in trajs)


def test_rendered_conversation_loss_mask_and_thinking_rule(tok, tasks):
    """The loop's tokens equal the chat template of its conversation; the loss mask is True
    exactly on the assistant turns (policy text and its <|end|>); reasoning survives tool results
    and is dropped by the template only once a new user message arrives."""
    task = next(t for t in tasks if t.family == "search" and t.difficulty >= 3)
    eng = ScriptedEngine(tok, reference_policy([task]))
    (traj,) = run_agent(eng, [task], PARAMS, AgentConfig(max_turns=16))
    msgs = traj.info["messages"]
    assert msgs[-1] == {"role": "tool", "content": "Submitted."}  # the transcript has the submit's result,
    msgs = msgs[:-1]  # the trajectory ends at the last sampled token
    env = __import__("envs.registry", fromlist=["make_env"]).make_env(task)
    tools = env.reset(task).tools
    rendered = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
    ids = tok.encode(rendered, add_special_tokens=False)
    assert traj.tokens.tolist() == ids  # ends with the last sampled <|end|>
    spans = _spans(tok, ids)
    assert len(spans) == traj.num_turns == len(task.reference)
    want = torch.zeros(len(ids), dtype=torch.bool)
    for a, b in spans:
        want[a:b] = True
    assert torch.equal(traj.loss_mask, want)
    assert traj.loss_mask[: traj.prompt_len].sum() == 0
    text = tok.decode(traj.tokens.tolist())
    n_reason = text.count("<think>")
    assert n_reason == len(task.reference) and text.count("<|tool|>") == len(task.reference) - 1
    # thinking rule in the template: a new user message drops earlier reasoning, tools and results stay
    later = tok.apply_chat_template(msgs + [{"role": "user", "content": "thanks"}], tools=tools, tokenize=False)
    assert later.count("<think>") == 0 and later.count("<tool_call>") == n_reason
    assert later.count("<|tool|>") == n_reason - 1


def test_sampled_ids_kept_verbatim(tok, tasks):
    """A policy whose ids are not the canonical tokenisation of its text (one id per character):
    the trajectory keeps exactly those ids and their log-probabilities, and the episode works."""
    task = next(t for t in tasks if t.family == "lookup")

    def chars(ids):
        return [i for ch in tok.decode(ids) for i in tok.encode(ch, add_special_tokens=False)]

    class CharEngine(ScriptedEngine):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.sampled: list[list[int]] = []

        def generate(self, prompts, params, *, seed=None):
            outs = super().generate(prompts, params, seed=seed)
            for o in outs:
                new = torch.tensor(chars(o.tokens[o.prompt_len:-1].tolist()) + [tok.eos_token_id])
                o.tokens = torch.cat([o.tokens[: o.prompt_len], new])
                o.loss_mask = torch.cat([o.loss_mask[: o.prompt_len], torch.ones(len(new), dtype=torch.bool)])
                o.logprobs = torch.cat([o.logprobs[: o.prompt_len], -torch.arange(1.0, len(new) + 1)])
                self.sampled.append(new.tolist())
            return outs

    eng = CharEngine(tok, reference_policy([task]))
    (traj,) = run_agent(eng, [task], PARAMS, AgentConfig(max_turns=8))
    assert traj.info["env_reward"] == 1.0
    canon = tok.encode(format_turn("Next I call find_employee.", "", [task.reference[0].values()]),
                       add_special_tokens=False)
    assert eng.sampled[0][:-1] != canon and tok.decode(eng.sampled[0][:-1]) == tok.decode(canon)
    spans = _spans(tok, traj.tokens.tolist())
    assert [traj.tokens[a:b].tolist() for a, b in spans] == eng.sampled
    assert [traj.logprobs[a:b].tolist() for a, b in spans] == [[-float(i) for i in range(1, len(x) + 1)]
                                                               for x in eng.sampled]
    assert traj.num_sampled == sum(map(len, eng.sampled))


def test_turn_limit_and_malformed_calls(tok, tasks):
    task = tasks[0]
    junk = lambda user, turn, results: '<tool_call>{"name": "get_hotels", "arguments": {bad}</tool_call>'
    (traj,) = run_agent(ScriptedEngine(tok, junk), [task], PARAMS, AgentConfig(max_turns=3))
    assert traj.finish_reason == "turns" and traj.info["env_reward"] == 0.0
    assert traj.num_turns == 3 and traj.num_tool_calls == 3 and traj.num_tool_errors == 3
    assert next(m["content"] for m in traj.info["messages"] if m["role"] == "tool").startswith("Error: tool call is not")
    assert traj.tokens[-1] == tok.eos_token_id and traj.loss_mask[-1]  # ends at the last sampled token


def test_context_management_drops_oldest_tool_outputs(tok, tasks):
    task = next(t for t in tasks if t.family == "search" and t.difficulty >= 4)
    full = run_agent(ScriptedEngine(tok, reference_policy([task])), [task], PARAMS, AgentConfig(max_turns=16))[0]
    window = len(full.tokens) + 200
    cfg = AgentConfig(max_turns=16, context_window=window, context_fraction=0.6)
    (traj,) = run_agent(ScriptedEngine(tok, reference_policy([task]), max_seq_len=window), [task], PARAMS, cfg)
    assert traj.info["env_reward"] == 1.0 and traj.info["dropped_tool_outputs"] >= 1
    assert len(traj.tokens) < len(full.tokens)
    text = tok.decode(traj.tokens.tolist())
    assert text.count(cfg.dropped_text) == traj.info["dropped_tool_outputs"]
    # tokens sampled before the last drop are context now (mask False); the last turns are trained on
    assert 0 < traj.num_sampled < full.num_sampled
    assert traj.num_sampled + traj.info["unmasked_by_drop"] == full.num_sampled
    last = _spans(tok, traj.tokens.tolist())[-1]
    assert traj.loss_mask[last[0]: last[1]].all()
    # a window too small for the prompt ends the episode at once
    (short,) = run_agent(ScriptedEngine(tok, reference_policy([task]), max_seq_len=50), [task], PARAMS,
                         AgentConfig(context_window=50))
    assert short.finish_reason == "context" and short.num_sampled == 0
    assert short.prompt_len == len(short.tokens) == full.prompt_len


def test_demonstrations_and_solver(tok, tasks):
    demos = demonstrations(tasks[:8], tok, AgentConfig(max_turns=16))
    assert all(d.info["env_reward"] == 1.0 and d.num_sampled > 0 for d in demos)
    solve = agent_solver(ScriptedEngine(tok, no_tool_policy()), PARAMS)
    assert solve(tasks[:3], 2) == [[0.0, 0.0]] * 3


def test_real_tiny_dsa_policy_plugs_in(tok, tasks):
    """The real engine through the loop: one trajectory per episode whose recorded log-probs,
    kept sets, routes and DSA selections replay exactly under teacher forcing."""
    from rl.policy import DSAConfig, DSAForCausalLM
    from rollout.consistency import logprob_mismatch
    from rollout.engine import EngineConfig, RolloutEngine

    cfg = DSAConfig.from_preset("tiny", vocab_size=len(tok), index_topk=8, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = DSAForCausalLM(cfg).eval()
    call_id = tok.convert_tokens_to_ids("<tool_call>")
    # Nudge the random policy towards <tool_call> so episodes take several turns (malformed calls).
    model.lm_head.register_forward_hook(lambda m, i, o: o.index_add(-1, torch.tensor([call_id]),
                                                                    torch.full(o.shape[:-1] + (1,), 6.0)))
    eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    task = next(t for t in tasks if t.family == "lookup" and t.difficulty == 1)
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=6)
    trajs = run_agent(eng, [task, task], params, AgentConfig(max_turns=3), seed=0)
    for t in trajs:
        L = len(t.tokens)
        assert t.loss_mask.shape == t.logprobs.shape == (L,)
        assert t.sampling_mask.shape[0] == L and t.expert_routes.shape[0] == L and t.topk_indices.shape[0] == L
        assert (t.logprobs[~t.loss_mask] == 0).all() and t.loss_mask[-1]
        assert t.num_turns >= 2 and t.num_tool_errors >= 1  # several turns, tool error observations
    m = logprob_mismatch(model, trajs, temperature=params.temperature)
    print(f"turns {[t.num_turns for t in trajs]}, lengths {[len(t.tokens) for t in trajs]}, {m}")
    assert m.num_tokens == sum(t.num_sampled for t in trajs) and m.max_abs < 1e-4, m


def test_rollout_worker_run_agent(tok, tasks):
    """`RolloutWorker.run_agent` (what the Ray pool calls) stamps indices like `generate`."""
    from rollout.worker import RolloutWorker

    cfg = {"vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    from rl.policy import DSAConfig

    w = RolloutWorker(DSAConfig.from_preset("tiny", **cfg), num_threads=1, device="cpu")
    task = next(t for t in tasks if t.family == "lookup")
    out = w.run_agent([task, task], SamplingParams(max_new_tokens=4), seed=1, prompt_indices=[7, 7],
                      sample_indices=[0, 1], agent_config=AgentConfig(max_turns=2))
    assert [(t.prompt_index, t.sample_index) for t in out] == [(7, 0), (7, 1)]
    assert all(t.num_turns >= 1 and t.loss_mask.any() and "env_reward" in t.info for t in out)


@pytest.mark.slow
def test_agent_trajectories_train_unchanged(tok, tasks):
    """The DeepSpeed GRPO trainer takes multi-turn trajectories as they are: its recomputed
    log-probs equal the sampler's on every policy token (ratio 1 at the first step)."""
    from rl.config import AlgorithmConfig, DeepSpeedConfig
    from rl.policy import DSAConfig, DSAForCausalLM
    from rl.trainer import Trainer
    from rollout.engine import EngineConfig, RolloutEngine

    call_id = tok.convert_tokens_to_ids("<tool_call>")

    def policy():
        torch.manual_seed(0)
        m = DSAForCausalLM(DSAConfig.from_preset("tiny", vocab_size=len(tok), index_topk=8,
                                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        m.lm_head.register_forward_hook(lambda mod, i, o: o.index_add(-1, torch.tensor([call_id]),
                                                                      torch.full(o.shape[:-1] + (1,), 6.0)))
        return m

    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=6)
    eng = RolloutEngine(policy().eval(), tok, EngineConfig(record_routes=True, record_topk=True))
    task = next(t for t in tasks if t.family == "lookup" and t.difficulty == 1)
    trajs = run_agent(eng, [task] * 4, params, AgentConfig(max_turns=3), seed=0)
    assert all(t.num_turns >= 2 for t in trajs)
    algo = AlgorithmConfig(lr=1e-3, warmup_steps=0, mini_batch_size=4, micro_batch_size=2, kl_coef=0.0,
                           keep_indexing=True)
    trainer = Trainer(policy, algo, DeepSpeedConfig(zero_stage=0), temperature=params.temperature,
                      pad_id=tok.pad_token_id)
    metrics = trainer.train_step(trajs, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert metrics["logp_mismatch_max"] < 1e-5 and metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_compact_tool_schema_shortens_prompts(tok, tasks):
    sel = [t for t in tasks if t.family == "trip"][:4]
    full = run_agent(ScriptedEngine(tok, reference_policy(sel)), sel, PARAMS, AgentConfig(max_turns=16))
    short = run_agent(ScriptedEngine(tok, reference_policy(sel)), sel, PARAMS,
                      AgentConfig(max_turns=16, tool_schema="compact"))
    assert all(s.info["env_reward"] == 1.0 for s in short)
    assert all(s.prompt_len < 0.5 * f.prompt_len for s, f in zip(short, full))
    assert '{"name": "get_hotels", "arguments": {"city": "string"}}' in tok.decode(short[0].tokens[: short[0].prompt_len])
    with pytest.raises(ValueError, match="tool_schema"):
        run_agent(ScriptedEngine(tok, reference_policy(sel)), sel, PARAMS, AgentConfig(tool_schema="xml"))


def test_agent_config_from_env_config():
    from rl.config import EnvConfig

    cfg = AgentConfig.from_env_config(EnvConfig(name="synth", max_turns=3, tool_schema="compact"), tool_workers=2)
    assert (cfg.max_turns, cfg.context_fraction, cfg.tool_schema, cfg.tool_workers) == (3, 0.8, "compact", 2)


def test_lone_surrogate_in_a_json_key_is_an_error_observation(tok, tasks):
    """An all-ASCII escape decoding to a lone surrogate must not reach the tokenizer (contract: error text)."""
    task = tasks[0]
    bad = lambda user, turn, results: '<tool_call>{"name": "get_hotels", "arguments": {"\\udcff": 1}}</tool_call>'
    (traj,) = run_agent(ScriptedEngine(tok, bad), [task], PARAMS, AgentConfig(max_turns=2))
    assert traj.num_tool_calls == 2 and traj.num_tool_errors == 2
    tool_msgs = [m["content"] for m in traj.info["messages"] if m["role"] == "tool"]
    assert tool_msgs and all(m.startswith("Error:") and "surrogate" in m for m in tool_msgs), tool_msgs
