"""The knobs of the actor side's parts, torch-free: sampling, the engine, the agent loop, the pool.

Each default is written here once. ``rl.config`` names these defaults (``RolloutConfig.temperature``
is ``SamplingParams.temperature``) and ``rl.setup`` hands every config value to these classes through
their ``from_config`` constructors, so a setting means the same with or without the run's config
(``tests/test_defaults.py`` checks both). Kept free of torch so ``rl.config`` stays cheap to import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envs.base import MAX_RESULT_CHARS, TOOL_SCHEMAS, TOOL_TIMEOUT_S

NUM_WORKERS = 1
"""Rollout workers of a pool (``rollout.pool.RolloutPool``)."""
CPUS_PER_WORKER = 1.0
"""CPUs each rollout worker reserves."""
GPUS_PER_WORKER = 0.0
"""GPUs each rollout worker reserves."""
WEIGHT_SYNC = ("object_store", "broadcast")
"""How new weights reach the workers (``RolloutPool.sync_weights``); the first is the default."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one generation call (all rows share it)."""

    temperature: float = 1.0
    """Softmax temperature (> 0). With `greedy`, only scales the recorded log-probability."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]; 1 = off."""
    top_k: int = 0
    """Keep the k most likely ids; 0 = off."""
    greedy: bool = False
    """Argmax decoding (evaluation); no kept set is recorded."""
    max_new_tokens: int = 64
    """Limit on sampled tokens per row (finish reason ``length``)."""
    stop: tuple[str, ...] = ()
    """Stop strings: a row ends after the token that completes one in its decoded text."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra ids that end a row, besides the tokenizer's EOS."""
    ignore_eos: bool = False
    """Do not stop on EOS (benchmarks: every row runs to `max_new_tokens`)."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0 (0 = off)")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 0")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def truncates(self) -> bool:
        """True when a kept set is recorded (top-k or top-p on, not greedy)."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1.0)

    @classmethod
    def from_config(cls, cfg, **overrides) -> SamplingParams:
        """From a `rl.config.RolloutConfig` (temperature, top_p, top_k, max_new_tokens, stop)."""
        kw = {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
              "max_new_tokens": cfg.max_new_tokens, "stop": tuple(cfg.stop)}
        return cls(**{**kw, **overrides})



@dataclass
class EngineConfig:
    """Knobs of the engine itself (sampling knobs are `SamplingParams`)."""

    max_batch_size: int = 64
    """Rows decoded at once; more prompts are split into micro-batches."""
    record_routes: bool = True
    """Record MoE routes of every position (Keep Routing). Ignored for a model without MoE."""
    record_topk: bool = False
    """Record DSA selections of every position (replay). Ignored in dense attention mode."""
    record_masks: bool = True
    """Record the kept set of each token when truncating (Keep Sampling Mask); False saves
    ceil(V/8) bytes per token and the packing, and leaves `sampling_mask` None."""
    static_decode: bool = True
    """Decode with `rollout.decode.StaticDecoder` (one-token steps with fixed shapes) when the model
    supports it; False (or a model it does not support) decodes through the model's forward."""
    compile: bool = False
    """`torch.compile` the static decode step (prefill and sampling stay eager: compiled, the sampler
    and the mask packing measured slower on CPU). Tiny preset, CPU, one thread:
    ~2x the decode speed of the eager step, after a one-time dynamic-shape compile of ~1 min per
    process (cached on disk by inductor, ~8-40 s for later processes). Worth it for long runs."""
    compact_fraction: float = 0.25
    """Compact the batch when this fraction of its rows has retired (1 = never)."""
    max_seq_len: int | None = None
    """Context limit (prompt + sampled); None = the model's `max_position_embeddings`."""

    @classmethod
    def from_config(cls, cfg, **overrides) -> EngineConfig:
        """From a `rl.config.RolloutConfig` (batch_size, record_routes, record_topk, compile)."""
        kw = {"max_batch_size": cfg.batch_size, "record_routes": cfg.record_routes, "record_topk": cfg.record_topk,
              "compile": cfg.compile}
        return cls(**{**kw, **overrides})



@dataclass
class AgentConfig:
    """Knobs of the loop (``rl.config.EnvConfig`` maps onto these)."""

    max_turns: int = 8
    """Policy turns per episode."""
    context_fraction: float = 0.8
    """Drop the oldest tool outputs once the context holds this fraction of the window."""
    tool_timeout_s: float = TOOL_TIMEOUT_S
    """Default per-tool-call timeout (a tool's ``ToolSpec.timeout_s`` overrides it)."""
    context_window: int | None = None
    """Tokens per episode; None = the engine's ``config.max_seq_len`` or the model's maximum."""
    max_result_chars: int = MAX_RESULT_CHARS
    """Tool results are truncated to this many characters."""
    dropped_text: str = "[older tool output dropped]"
    """What replaces a dropped tool output."""
    tool_schema: str = TOOL_SCHEMAS[0]
    """Tools in the prompt: ``openai`` (full function-calling schemas) or ``compact`` (names and
    argument types only, ``envs.base.compact_tools``: far shorter prompts for small models)."""
    tool_workers: int = 8
    """Environments of a round stepped concurrently (threads; 1 = one after another)."""

    @classmethod
    def from_env_config(cls, cfg: Any, **overrides: Any) -> AgentConfig:
        """From ``rl.config.EnvConfig`` (max_turns, context_fraction, tool_timeout_s, max_result_chars,
        tool_schema)."""
        kw = {"max_turns": cfg.max_turns, "context_fraction": cfg.context_fraction,
              "tool_timeout_s": cfg.tool_timeout_s, "max_result_chars": cfg.max_result_chars,
              "tool_schema": cfg.tool_schema}
        return cls(**{**kw, **overrides})
