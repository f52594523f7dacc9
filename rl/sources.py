"""Task sources: what a prompt and a rollout are for a run, behind one interface.

A run's task source (:class:`TaskSource`) says how a batch of its rows is rolled out on the pool,
decoded in-process for evaluation, scored (the reward inputs), logged and cold-started:
- :class:`PromptSource` (``env.name`` unset): rows are data-set records with ``prompt_ids``; a
  sample is one completion;
- :class:`AgentSource` (``env.name`` set, ``+experiment=agent``): rows are ``envs.registry.Task``;
  a sample is one multi-turn tool-use episode (``rollout.agent``), scored by the environment's
  verifier.
The loop does not branch on the kind. :func:`load_data` and :func:`make_source` build a run's source
from its config (``rl.setup``).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from rl.config import StartupError, TrainConfig
from rl.data import DataError, load_prompts
from rollout.types import Trajectory


class TaskSource(Protocol):
    """The interface of a task source (see the module docstring)."""

    train_rows: list[Any]
    """Training rows (data records or tasks)."""
    test_rows: list[Any] | None
    """Held-out rows, or None."""
    val_rows: list[Any] | None
    """Validation rows (``keep_best``: disjoint from ``test_rows``), or None."""
    norm_constant: float
    """The trainer's token normaliser (the longest a sample can be)."""
    cache_key: str
    """What determines the cold-start data (part of its cache key)."""

    def rollout(self, pool: Any, rows: list[Any], params: Any, group_size: int) -> list[Trajectory]:
        """``group_size`` samples per row on the rollout workers, in (row, sample) order."""

    def generate(self, engine: Any, rows: list[Any], params: Any, group_size: int, seed: int) -> list[Trajectory]:
        """The same, in-process on ``engine`` (evaluation)."""

    def reward_inputs(self, rows: list[Any], trajs: list[Trajectory]) -> tuple[list, list[str], dict[str, list]]:
        """(prompts, completions, fields) for ``RewardRunner.score``; ``rows[i]`` is trajectory i's row."""

    def metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
        """Source-specific step metrics."""

    def cold_start(self, model: Any, tok: Any, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, float]:
        """Supervised cold start of ``model`` on this source's demonstrations; returns its report."""


class PromptSource:
    """Plain prompt data (``env.name`` unset): rows are data records with ``prompt_ids``; a sample is
    one completion."""

    def __init__(self, train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]] | None,
                 norm_constant: float, cache_key: str, val_rows: list[dict[str, Any]] | None = None) -> None:
        self.train_rows, self.test_rows, self.val_rows = train_rows, test_rows, val_rows
        self.norm_constant = norm_constant
        """The trainer's token normaliser (``rollout.max_new_tokens``)."""
        self.cache_key = cache_key
        """What determines the cold-start data (part of its cache key)."""

    def rollout(self, pool: Any, rows: list[Any], params: Any, group_size: int) -> list[Trajectory]:
        """``group_size`` samples per row on the rollout workers, in (row, sample) order."""
        return pool.generate([r["prompt_ids"] for r in rows], params, group_size)

    def generate(self, engine: Any, rows: list[Any], params: Any, group_size: int, seed: int) -> list[Trajectory]:
        """The same, in-process on ``engine`` (evaluation)."""
        return engine.generate([r["prompt_ids"] for r in rows for _ in range(group_size)], params, seed=seed)

    def reward_inputs(self, rows: list[Any], trajs: list[Trajectory]) -> tuple[list, list[str], dict[str, list]]:
        """(prompts, completions, fields) for ``RewardRunner.score``; ``rows[i]`` is trajectory i's row."""
        fields = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
        fields.update(finish_reason=[t.finish_reason for t in trajs], num_turns=[t.num_turns for t in trajs])
        return [r["prompt"] for r in rows], [t.completion for t in trajs], fields

    def metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
        """Source-specific step metrics (none for plain prompts)."""
        return {}

    def cold_start(self, model: Any, tok: Any, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, float]:
        """Supervised cold start on the (imperfect) teacher's worked solutions (``rl.coldstart``)."""
        from rl.coldstart import overlong_warning, run_cold_start, teacher_examples

        rng = random.Random(cfg.seed)  # one generator: the teacher's choices, then the batch order
        examples = teacher_examples(tok, self.train_rows, cfg.coldstart.teacher_stop_early, rng)
        warning = overlong_warning(examples, cfg.rollout.max_new_tokens)
        if warning:
            log(warning)
        return run_cold_start(model, tok, examples, cfg.coldstart, cfg.seed, log=log, rng=rng)


class AgentSource(PromptSource):
    """Tool environments (``env.name`` set): rows are ``envs.registry.Task``; a sample is one
    multi-turn episode (``rollout.agent``), scored by the environment's verifier
    (``info["env_reward"]``, read by the ``env_verifier`` reward)."""

    def __init__(self, train_rows: list[Any], test_rows: list[Any] | None, norm_constant: float, cache_key: str,
                 agent_config: Any, val_rows: list[Any] | None = None) -> None:
        super().__init__(train_rows, test_rows, norm_constant, cache_key, val_rows)
        self.agent_config = agent_config
        """The ``rollout.agent.AgentConfig`` of every episode."""

    def rollout(self, pool: Any, rows: list[Any], params: Any, group_size: int) -> list[Trajectory]:
        return pool.run_agent(rows, params, group_size, agent_config=self.agent_config)

    def generate(self, engine: Any, rows: list[Any], params: Any, group_size: int, seed: int) -> list[Trajectory]:
        from rollout.agent import run_agent

        return run_agent(engine, [t for t in rows for _ in range(group_size)], params, self.agent_config, seed=seed,
                         prompt_indices=[i for i in range(len(rows)) for _ in range(group_size)],
                         sample_indices=[s for _ in rows for s in range(group_size)])

    def reward_inputs(self, rows: list[Any], trajs: list[Trajectory]) -> tuple[list, list[str], dict[str, list]]:
        fields = {"env_reward": [t.info["env_reward"] for t in trajs],
                  "finish_reason": [t.finish_reason for t in trajs], "num_turns": [t.num_turns for t in trajs],
                  "num_tool_calls": [t.num_tool_calls for t in trajs],
                  "num_tool_errors": [t.num_tool_errors for t in trajs]}
        return [r.prompt for r in rows], [t.completion for t in trajs], fields

    def metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
        n = max(1, len(trajs))
        return {"agent/num_turns_mean": sum(t.num_turns for t in trajs) / n,
                "agent/num_tool_calls_mean": sum(t.num_tool_calls for t in trajs) / n,
                "agent/num_tool_errors_mean": sum(t.num_tool_errors for t in trajs) / n,
                "agent/success_mean": sum(t.info["env_reward"] for t in trajs) / n}

    def cold_start(self, model: Any, tok: Any, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, float]:
        """Supervised cold start on the reference solutions replayed through the multi-turn loop."""
        from rl.coldstart import run_cold_start
        from rollout.scripted import cold_start_examples

        examples = cold_start_examples(self.train_rows, tok, self.agent_config,
                                       stop_early=cfg.coldstart.teacher_stop_early,
                                       reasoning=cfg.env.teacher_reasoning, seed=cfg.seed)
        log(f"cold start: {len(examples)} demonstrations, {sum(len(x) for x, _ in examples) / len(examples):.0f} "
            "tokens each on average")
        return run_cold_start(model, tok, examples, cfg.coldstart, cfg.seed, log=log)

    def keep_solvable(self, engine: Any, params: Any, k: int, seed: int, say: Callable[[str], None]) -> None:
        """V3.2's filter: drop training tasks the policy behind ``engine`` never solves in ``k`` tries."""
        from rollout.scripted import solvable

        kept, passes = solvable(self.train_rows, engine, params, k, self.agent_config, seed)
        say(f"solvability filter: {len(kept)} of {len(self.train_rows)} training environments solved at least "
            f"once in {k} tries")
        if not kept:
            raise StartupError(f"env.pass_k={k}: the cold-started policy solves none of the {len(passes)} training "
                               "environments; train the cold start longer or set env.pass_k=0")
        self.train_rows = kept


def load_data(cfg: TrainConfig) -> Any:
    """Prompt data sets, or (train, held-out) tasks when ``env.name`` is set."""
    try:
        if cfg.env.name:
            from envs.data import load_tasks

            return load_tasks(cfg.env, cfg.seed)
        return load_prompts(cfg.data)
    except DataError as err:
        raise StartupError(str(err)) from err
    except (ValueError, FileNotFoundError) as err:
        if not cfg.env.name:
            raise
        raise StartupError(f"env: {str(err).splitlines()[0]}") from err


def prompt_messages(prompt: str | list[dict[str, str]], system_prompt: str | None = None,
                    template: str = "{prompt}") -> list[dict[str, str]]:
    """The chat messages of one data-set prompt: chat messages are kept as they are; a text goes
    into ``template`` (its ``{prompt}``) as the user message, after ``system_prompt`` if set.

    >>> prompt_messages("1+1?", "Be brief.", "{prompt} Answer in one line.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '1+1? Answer in one line.'}]
    """
    if isinstance(prompt, list):
        return prompt
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": template.replace("{prompt}", prompt)}]


def _rows(ds: Any, tok: Any, data_cfg: Any) -> list[dict[str, Any]]:
    """Data set records with their chat-templated ``prompt_ids`` (``data.system_prompt`` and
    ``data.prompt_template`` applied through the model's own chat template)."""
    rows = []
    for r in ds:
        msgs = prompt_messages(r["prompt"], data_cfg.system_prompt, data_cfg.prompt_template)
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        rows.append({**r, "prompt_ids": tok(text, add_special_tokens=False)["input_ids"]})
    return rows


def make_source(cfg: TrainConfig, tok: Any, data: Any) -> PromptSource:
    """The task source of the run from its loaded data (``load_data``): the test split's first
    ``data.test_size`` rows are the held-out rows, the next ``data.val_size`` the validation rows."""
    n_test, n_val = cfg.data.test_size, cfg.data.val_size
    if cfg.env.name:
        from rollout.agent import AgentConfig

        train, test = data
        _check_val_rows(len(test), cfg)
        return AgentSource(train, test[:n_test] or None,
                           norm_constant=float(cfg.env.max_turns * cfg.rollout.max_new_tokens),
                           cache_key="env " + repr(asdict(cfg.env)) + str(cfg.seed),
                           agent_config=AgentConfig.from_env_config(cfg.env),
                           val_rows=test[n_test:n_test + n_val] or None)
    train_rows = _rows(data["train"], tok, cfg.data)
    test_rows = val_rows = None
    if "test" in data:
        test = data["test"]
        _check_val_rows(len(test), cfg)
        test_rows = _rows(test.select(range(min(n_test, len(test)))), tok, cfg.data)
        if n_val:
            val_rows = _rows(test.select(range(n_test, n_test + n_val)), tok, cfg.data)
    elif n_val:
        _check_val_rows(0, cfg)
    return PromptSource(train_rows, test_rows, norm_constant=float(cfg.rollout.max_new_tokens),
                        cache_key=_cache_key(cfg), val_rows=val_rows)


def _cache_key(cfg: TrainConfig) -> str:
    """What determines a prompt source's cold-start data: the data settings less the evaluation sizes."""
    data = {k: v for k, v in asdict(cfg.data).items() if k not in ("test_size", "val_size")}
    return repr(data) + str(cfg.seed)


def _check_val_rows(num_test: int, cfg: TrainConfig) -> None:
    """The validation rows follow the held-out rows in the test split: it must hold both."""
    n_test, n_val = cfg.data.test_size, cfg.data.val_size
    if n_val and num_test < n_test + n_val:
        raise StartupError(
            f"data.val_size={n_val} needs {n_test + n_val} rows in the test split after data.test_size={n_test} "
            f"held-out rows, it has {num_test}: lower data.test_size or data.val_size"
            + (" (or raise data.synth.num_test)" if cfg.data.source == "synth_math" else "")
            + ("" if not cfg.env.name else " (or raise env.test_fraction or env.num_envs)"))
