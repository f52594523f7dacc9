"""Typed run configuration: one dataclass per Hydra config group, validated at start-up.

Every default is written once, in the lowest layer that uses it. A setting of a part below the
learner that also works on its own (the sampler, the engine, the agent loop, the pool, the
environments, the math generator, the reward runner) takes its default from that part
(``temperature: float = _f(SamplingParams.temperature, gt=0.0)``); every other default is written
here, and the learner's parts name it (``Trainer(temperature=RolloutConfig.temperature)``).
``tests/test_defaults.py`` fails when a literal is restated. The YAML files under ``configs/`` name
the options of each group and set only what distinguishes an option from these defaults
(``deepspeed/zero3.yaml`` sets ``zero_stage: 3`` and nothing else). Hydra checks key names and types against these dataclasses
when it composes the config (a misspelt key fails there); :func:`validate` then checks every value
against the limits declared in each field's metadata and raises :class:`ConfigError` with one line
naming the key, the bad value and what is allowed.

Field docs sit directly under each field (cleanrl style).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from envs.base import TOOL_SCHEMAS
from envs.synth import pipeline as env_synth
from rewards import runner as reward_runner
from rl import policy_defaults, synth_math
from rollout.params import (
    CPUS_PER_WORKER,
    GPUS_PER_WORKER,
    NUM_WORKERS,
    WEIGHT_SYNC,
    AgentConfig,
    EngineConfig,
    SamplingParams,
)


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming key, value and fix."""


class StartupError(RuntimeError):
    """A run cannot start (a data source, model, reward or cluster that does not load); the
    message names the input and the fix."""


def _f(default: Any = dataclasses.MISSING, *, factory: Any = None, ge: float | None = None,
       gt: float | None = None, le: float | None = None, lt: float | None = None,
       choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with validation limits in its metadata (checked by :func:`validate`)."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}.items() if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """Named shape from ``rl.policy`` presets (used when ``path`` is unset)."""
    path: str | None = None
    """A saved policy: a DSA model directory or hub id; or a Llama/Qwen2 directory, a ``gguf:PATH`` /
    ``gguf:smollm2`` source or a DeepSeek-V3/V3.2 directory, converted to DSA once (cached)."""
    tokenizer: str | None = None
    """Tokenizer directory or hub id; unset = ``path``'s tokenizer, or the embedded one."""
    attention_mode: str = _f(policy_defaults.ATTENTION_MODES[0], choices=policy_defaults.ATTENTION_MODES)
    """``sparse``: DSA top-k attention; ``dense``: full causal MLA (oracle, dense warm-up)."""
    index_topk: int | None = _f(None, ge=1)
    """Override the preset's number of selected tokens per query."""
    dtype: str = _f("auto", choices=("auto", "float32", "bfloat16", "float16"))
    """Parameter / compute dtype of the trainer: ``auto`` = bfloat16 on a CUDA device that supports
    it, float32 on CPU (bf16 there is ~3x slower); see ``rl.device.pick_dtype``."""
    final_format: str = _f("dsa", choices=("dsa", "deepseek_v32"))
    """Format of the run's ``final/`` policy: ``dsa`` (ours) or ``deepseek_v32`` (transformers'
    DeepseekV32ForCausalLM / serving engines; the ``dsa`` copy then goes to ``final_dsa/``)."""


@dataclass
class AlgorithmConfig:
    name: str = _f("grpo", choices=("grpo",))
    """RL algorithm."""
    group_size: int = _f(8, ge=2)
    """G: samples per prompt; advantages are relative within a group."""
    advantage: str = "grpo"
    """Advantage estimator (registry name in ``rl.advantages``)."""
    scale_by_std: bool = False
    """Divide group-relative advantages by the group's std (V3.2 does not)."""
    policy_loss: str = "grpo"
    """Policy loss (registry name in ``rl.losses``)."""
    loss_agg: str = "seq_mean_token_mean"
    """Aggregation over tokens and sequences (registry name in ``rl.losses``)."""
    clip_low: float = _f(0.2, ge=0.0, lt=1.0)
    """Ratio clip below: r >= 1 - clip_low."""
    clip_high: float = _f(0.28, ge=0.0)
    """Ratio clip above: r <= 1 + clip_high."""
    kl_estimator: str = "unbiased_k3"
    """KL estimator (registry name in ``rl.kl``): k1, k2, k3, unbiased_k3."""
    kl_coef: float = _f(0.0, ge=0.0)
    """beta. 0 skips the reference policy entirely (V3.2 uses weak or zero KL for math)."""
    off_policy_mask: bool = True
    """Mask negative-advantage sequences whose mean log(pi_old/pi_theta) exceeds ``off_policy_delta``."""
    off_policy_delta: float = _f(0.05, ge=0.0)
    """delta of the off-policy sequence mask (not disclosed by V3.2)."""
    keep_sampling_mask: bool = True
    """Apply the sampler's top-p/top-k kept set to pi_theta and pi_ref in training."""
    keep_routing: bool = True
    """Enforce the sampler's MoE expert routes in the training forward pass."""
    keep_indexing: bool = False
    """Enforce the sampler's DSA top-k selections in the training forward pass."""
    indexer_loss_weight: float = _f(0.0, ge=0.0)
    """Weight of the sparse-stage indexer KL added during RL (0 = off)."""
    share_prefix: bool = False
    """Training forward: run each distinct prompt of a micro-batch once and the G samples' replies
    on its cached keys (``rl.prefix``; exact up to float rounding; not with the indexer loss)."""
    group_minibatches: bool = False
    """Cut mini-batches from whole groups (shuffled group order) instead of shuffled rows, as verl
    does: with ``share_prefix`` a mini-batch of m groups then runs m prompts, not ~mini_batch_size."""
    lr: float = _f(2e-5, gt=0.0)
    """AdamW learning rate."""
    weight_decay: float = _f(0.0, ge=0.0)
    """AdamW weight decay."""
    warmup_steps: int = _f(5, ge=0)
    """Linear LR warm-up, in optimizer steps."""
    lr_schedule: str = _f("constant", choices=("constant", "cosine"))
    """LR after warm-up: ``constant``, or ``cosine`` decay to ``min_lr_ratio * lr`` at ``lr_decay_steps``."""
    lr_decay_steps: int | None = _f(None, ge=1)
    """Optimizer step at which the cosine schedule reaches its floor (required by ``cosine``)."""
    min_lr_ratio: float = _f(0.0, ge=0.0, le=1.0)
    """Floor of the cosine schedule, as a fraction of ``lr``."""
    grad_clip: float = _f(1.0, gt=0.0)
    """Global gradient-norm clip."""
    epochs_per_batch: int = _f(1, ge=1)
    """Passes over each rollout batch."""
    mini_batch_size: int = _f(64, ge=1)
    """Trajectories per optimizer step (several mini-batches = several updates per rollout batch)."""
    micro_batch_size: int = _f(16, ge=1)
    """Trajectories per forward/backward (gradient accumulation up to ``mini_batch_size``)."""


@dataclass
class RolloutConfig:
    num_workers: int = _f(NUM_WORKERS, ge=1)
    """Ray rollout actors."""
    prompts_per_step: int = _f(8, ge=1)
    """B: prompts sampled per GRPO step (each run ``group_size`` times)."""
    max_new_tokens: int = _f(SamplingParams.max_new_tokens, ge=1)
    """Response length limit per turn."""
    temperature: float = _f(SamplingParams.temperature, gt=0.0)
    """Sampling temperature."""
    top_p: float = _f(SamplingParams.top_p, gt=0.0, le=1.0)
    """Nucleus truncation (1 = off)."""
    top_k: int = _f(SamplingParams.top_k, ge=0)
    """Top-k truncation (0 = off)."""
    stop: list[str] = _f(factory=lambda: list(SamplingParams.stop))
    """Extra stop strings (the tokenizer's end-of-turn token always stops)."""
    record_routes: bool = EngineConfig.record_routes
    """Record MoE routes per sampled token (needed by Keep Routing)."""
    record_topk: bool = EngineConfig.record_topk
    """Record DSA selections per sampled token (needed by keep_indexing)."""
    batch_size: int = _f(EngineConfig.max_batch_size, ge=1)
    """Sequences a worker decodes at once."""
    compile: bool = EngineConfig.compile
    """torch.compile each worker's decode step (rollout.decode): about 2x the decode speed of the
    eager engine on CPU, after a compile of about a minute per worker (less with inductor's disk
    cache). Pays off for runs of more than a few minutes of rollouts; off by default."""
    weight_sync: str = _f(WEIGHT_SYNC[0], choices=WEIGHT_SYNC)
    """How new weights reach the rollout workers after each update: ``object_store`` (one
    ``ray.put``, each worker loads the copy) or ``broadcast`` (a ``torch.distributed`` broadcast from
    the driver, rank 0, to every worker: NCCL when the driver and the workers have GPUs, else gloo;
    an object-store copy is kept for re-created workers)."""


@dataclass
class SynthMathConfig:
    num_train: int = _f(10_000, ge=1)
    """Training problems generated."""
    num_test: int = _f(1_000, ge=1)
    """Held-out problems generated (disjoint from train)."""
    levels: list[int] = _f(factory=lambda: list(synth_math.LEVELS))
    """Difficulty levels to mix (see ``rl.data``)."""
    max_operand: int = _f(synth_math.MAX_OPERAND, ge=synth_math.MIN_MAX_OPERAND)
    """Largest number a problem states (multipliers stay single-digit)."""
    seed: int = 0
    """Generator seed (the data set is a pure function of this config)."""


@dataclass
class DataConfig:
    source: str = "synth_math"
    """``synth_math`` (embedded generator), a local .json/.jsonl/.parquet file or directory, or a hub id."""
    train_split: str = "train"
    """Split used for training (files and hub sets)."""
    test_split: str | None = "test"
    """Held-out split for evaluation; unset = no evaluation set."""
    prompt_column: str = "prompt"
    """Column holding the prompt text (or chat messages)."""
    answer_column: str | None = "answer"
    """Column holding the reference answer (passed to rewards as ``answer``)."""
    test_size: int = _f(200, ge=1)
    """Held-out problems used per evaluation."""
    val_size: int = _f(0, ge=0)
    """Validation problems for ``keep_best``: the test split's next ``val_size`` rows after the
    first ``test_size`` (disjoint from the evaluation rows); 0 = none."""
    system_prompt: str | None = None
    """A system message put before every prompt (through the model's chat template); unset = none."""
    prompt_template: str = "{prompt}"
    """The user message, with ``{prompt}`` replaced by the data set's prompt text (other braces are
    kept as written), e.g. ``"{prompt}\nPut the final answer in \\boxed{}."``. Prompts given as
    chat messages are used as they are."""
    synth: SynthMathConfig = field(default_factory=SynthMathConfig)
    """Settings of the embedded math generator."""
    cache_dir: str | None = None
    """Where generated data sets are cached; unset = ``$DSA_RL_CACHE`` or ``~/.cache/dsa-rl``."""


@dataclass
class ColdStartConfig:
    enabled: bool = True
    """Run the supervised cold start before RL (cached: a second run with the same settings skips it)."""
    sft_steps: int = _f(1500, ge=0)
    """Supervised steps on the teacher's solutions (dense attention, all parameters)."""
    batch_size: int = _f(32, ge=1)
    """Sequences per supervised step."""
    lr: float = _f(2e-3, gt=0.0)
    """Peak learning rate of the supervised stage (cosine decay, 5% warm-up)."""
    teacher_stop_early: float = _f(0.6, ge=0.0, le=1.0)
    """The teacher's systematic mistake: on multi-step problems it answers an intermediate value
    with this probability; in tool environments (``env.name`` set) it plays the solution of the
    task one level easier, or on level 0 submits a guess without the look-up
    (``rollout.scripted.weak_reference``). 0 = a perfect teacher."""
    indexer_warmup_steps: int = _f(100, ge=0)
    """Dense warm-up steps of the lightning indexer (everything else frozen)."""
    indexer_lr: float = _f(1e-3, gt=0.0)
    """Learning rate of the indexer warm-up (V3.2: 1e-3)."""
    sparse_steps: int = _f(100, ge=0)
    """Sparse-stage steps (top-k on, LM loss + indexer KL over the selected set)."""
    pretrained: bool = False
    """Also run these stages on a ``model.path`` policy (a converted pretrained checkpoint: set
    ``sft_steps: 0`` to keep only DSA's indexer warm-up and sparse stage), cached like the embedded
    model's. Off: a ``model.path`` policy starts RL as loaded."""


@dataclass
class RewardTermConfig:
    name: str | None = None
    """A built-in reward name or an entry-point name in group ``dsa_rl.rewards``."""
    _target_: str | None = None
    """A dotted import path to a reward callable (instead of ``name``)."""
    weight: float = 1.0
    """Weight of this term in the total reward."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments bound to the reward function."""


@dataclass
class RewardsConfig:
    terms: dict[str, RewardTermConfig] = field(default_factory=dict)
    """Named reward terms; the reward is their weighted sum (each term is logged)."""
    timeout_s: float = _f(reward_runner.TIMEOUT_S, gt=0.0)
    """Per-step budget of every reward call (a failing batch is retried sample by sample within a
    second such budget, so scoring returns within about 2 x timeout_s)."""
    isolation: str = _f(reward_runner.ISOLATION[0], choices=reward_runner.ISOLATION)
    """``process``: rewards run in worker processes killed and replaced at the deadline; ``thread``:
    in threads (for rewards sharing the trainer's memory, e.g. a reward model on the GPU)."""
    num_workers: int = _f(reward_runner.NUM_WORKERS, ge=1)
    """Reward evaluations run in parallel."""
    on_error: str = _f(reward_runner.ON_ERROR[0], choices=reward_runner.ON_ERROR)
    """``count``: score 0 and count the error; ``raise``: stop the run."""
    max_error_rate: float = _f(reward_runner.MAX_ERROR_RATE, ge=0.0, le=1.0)
    """Stop the run when a step's fraction of failed reward evaluations exceeds this."""
    worker_memory_mb: int = _f(reward_runner.MEMORY_MB, ge=0)
    """Address-space cap (RLIMIT_AS) of each reward worker process; 0 = none (e.g. a reward that
    initialises CUDA, which reserves far more address space than it uses)."""


@dataclass
class EnvConfig:
    name: str | None = None
    """Registered environment family (``dsa_rl.envs``), or unset for plain prompt data."""
    max_turns: int = _f(AgentConfig.max_turns, ge=1)
    """Tool-use turns per episode."""
    context_fraction: float = _f(AgentConfig.context_fraction, gt=0.0, le=1.0)
    """Drop the oldest tool outputs once a conversation reaches this fraction of the context."""
    tool_timeout_s: float = _f(AgentConfig.tool_timeout_s, gt=0.0)
    """Per-tool-call timeout."""
    path: str | None = None
    """A data set written by ``python -m envs.synthesize`` (``train`` / ``test`` splits); unset =
    synthesize ``num_envs`` environments at start-up (``name``: ``synth`` = every registered family,
    or one family name)."""
    num_envs: int = _f(env_synth.NUM_ENVS, ge=1)
    """Environments synthesized when ``path`` is unset (seconds per thousand)."""
    levels: list[int] = _f(factory=lambda: list(env_synth.LEVELS))
    """Difficulty levels synthesized (round-robin)."""
    test_fraction: float = _f(env_synth.TEST_FRACTION, ge=0.0, lt=1.0)
    """Share of the synthesized environments held out for evaluation."""
    pass_k: int = _f(0, ge=0)
    """Solvability filter: drop training environments the cold-started policy never solves in
    ``pass_k`` tries (V3.2: pass@100 > 0); 0 = off."""
    max_result_chars: int = _f(AgentConfig.max_result_chars, ge=1)
    """Tool results are truncated to this many characters."""
    tool_schema: str = _f(AgentConfig.tool_schema, choices=TOOL_SCHEMAS)
    """Tools in the prompt: full OpenAI function schemas, or ``compact`` (names and argument types:
    about half the prompt tokens, for small models on short contexts)."""
    teacher_reasoning: bool = True
    """Cold-start demonstrations open each assistant turn with a one-line ``<think>`` (False: tool
    calls only, shorter episodes)."""


@dataclass
class BudgetConfig:
    max_steps: int | None = _f(None, ge=1)
    """GRPO steps."""
    max_samples: int | None = _f(None, ge=1)
    """Trajectories sampled."""
    max_tokens: int | None = _f(None, ge=1)
    """Tokens processed (rollout + training)."""
    max_flops: float | None = _f(None, gt=0)
    """Estimated FLOPs (rollout + training)."""
    max_seconds: float | None = _f(None, gt=0)
    """Wall-clock seconds of the RL loop."""
    pretrain_flops: float | None = _f(None, gt=0)
    """Stated pre-training compute; with ``pretrain_fraction`` gives a FLOP budget."""
    pretrain_fraction: float | None = _f(None, gt=0)
    """Fraction of ``pretrain_flops`` to spend on RL (V3.2 spent over 0.1)."""


@dataclass
class DeepSpeedConfig:
    zero_stage: int = _f(0, choices=(0, 1, 2, 3))
    """ZeRO stage."""
    offload_optimizer: bool = False
    """Offload optimizer states to CPU (ZeRO 1-3)."""
    offload_params: bool = False
    """Offload parameters to CPU (ZeRO 3)."""
    num_processes: int = _f(1, ge=1)
    """Data-parallel trainer processes (Ray actors)."""


@dataclass
class ResourcesConfig:
    gpus_per_trainer: float = _f(0.0, ge=0.0)
    """GPUs per trainer process (0 on CPU)."""
    gpus_per_worker: float = _f(GPUS_PER_WORKER, ge=0.0)
    """GPUs per rollout worker (0 on CPU)."""
    cpus_per_actor: float = _f(CPUS_PER_WORKER, gt=0.0)
    """CPUs reserved per actor."""


@dataclass
class ClusterConfig:
    kind: str = _f("local", choices=("local", "ray_job", "slurm"))
    """``local``: start Ray inside the process; ``ray_job``/``slurm``: submit with ``rl.submit``."""
    address: str | None = None
    """Ray address to join (``auto``, ``ray://host:port``, or a dashboard URL for ``ray_job``)."""
    num_cpus: int | None = _f(None, ge=1)
    """CPUs for a local Ray cluster (unset = all)."""
    nodes: int = _f(1, ge=1)
    """Nodes (Slurm)."""
    gpus_per_node: int = _f(0, ge=0)
    """GPUs per node (Slurm)."""
    partition: str | None = None
    """Slurm partition."""
    account: str | None = None
    """Slurm account."""
    time: str = "01:00:00"
    """Slurm time limit."""
    placement: str = _f("PACK", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD", "none"))
    """Ray placement-group strategy of the trainer and rollout actors (``none``: no placement groups)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables of the submitted job (Ray runtime env; exported in the sbatch script)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines the sbatch script runs first (e.g. ``source .venv/bin/activate``); srun steps
    inherit the environment they leave."""
    ray_port: int = _f(6379, ge=1, le=65535)
    """GCS port of the Ray head a Slurm job starts."""
    ray_head_args: list[str] = field(default_factory=list)
    """Extra arguments of the head's ``ray start`` in a Slurm job (e.g. ``--temp-dir=/scratch/ray``)."""
    ray_worker_args: list[str] = field(default_factory=list)
    """Extra arguments of the other nodes' ``ray start`` in a Slurm job."""
    wait_nodes_s: int = _f(300, ge=1)
    """Seconds a Slurm job waits for all its nodes to join the Ray cluster."""


@dataclass
class LoggerConfig:
    kind: str = _f("wandb", choices=("wandb", "none"))
    """``wandb`` (offline unless WANDB_MODE says otherwise) or ``none`` (console only)."""
    project: str = "dsa-rl"
    """wandb project."""
    mode: str = _f("offline", choices=("offline", "online", "disabled"))
    """wandb mode; the WANDB_MODE environment variable wins when set."""
    log_every: int = _f(1, ge=1)
    """Steps between metric logs."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class IndexerTrainConfig:
    """``python -m rl.indexer_train``: turning a dense checkpoint into a DSA policy (V3.2 section 2)."""

    stage: str = _f("warmup", choices=("warmup", "sparse"))
    """``warmup``: dense attention, only the indexers train (KL to head-summed attention);
    ``sparse``: top-k on, LM loss + indexer KL over the selected set (indexer input detached)."""
    text: str = "synth"
    """Training text: ``synth`` (the embedded math/tool corpus, in the embedded tokenizer's format),
    ``math_chat`` (synthesized word problems with worked solutions in the model's own chat template),
    a local .txt/.json/.jsonl/.parquet file or directory, or a hub data set id."""
    text_column: str = "text"
    """Column holding the text (files and hub sets other than .txt)."""
    text_split: str = "train"
    """Split of a hub data set / data files."""
    seq_len: int = _f(256, ge=8)
    """Tokens per packed training sequence."""
    num_sequences: int = _f(2000, ge=1)
    """Packed training sequences built (cycled if the budget asks for more)."""
    eval_sequences: int = _f(32, ge=1)
    """Held-out packed sequences for the recall / LM-gap report."""
    batch_size: int = _f(8, ge=1)
    """Sequences per optimizer step."""
    lr: float = _f(1e-3, gt=0.0)
    """Learning rate of the indexer parameters (V3.2 warm-up: 1e-3)."""
    model_lr: float = _f(1e-5, gt=0.0)
    """Learning rate of every other parameter in the sparse stage."""
    warmup_steps: int = _f(10, ge=0)
    """Linear LR warm-up steps."""
    indexer_loss_weight: float = _f(policy_defaults.INDEXER_LOSS_WEIGHT, ge=0.0)
    """Weight of the indexer KL next to the LM loss in the sparse stage."""
    index_n_heads: int = _f(policy_defaults.INDEX_N_HEADS, ge=1)
    """Indexer heads H_I given to a checkpoint converted on the fly."""
    index_head_dim: int = _f(policy_defaults.INDEX_HEAD_DIM, ge=4)
    """Indexer head dim d_I given to a checkpoint converted on the fly (a multiple of 4)."""
    output: str | None = None
    """Where the trained policy is saved; unset = RUN_DIR/model."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    coldstart: ColdStartConfig = field(default_factory=ColdStartConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    indexer: IndexerTrainConfig = field(default_factory=IndexerTrainConfig)
    """Dense warm-up / sparse stage of a converted checkpoint (``rl.indexer_train``)."""
    experiment: str = "default"
    """Experiment name (set by ``+experiment=...``)."""
    seed: int = 0
    """Seed of everything: data order, sampling, initialisation."""
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    """``auto``: CUDA when available."""
    resume: str | None = None
    """A run directory (or ``latest``) to continue from its latest checkpoint."""
    eval_every: int = _f(10, ge=1)
    """Steps between held-out evaluations."""
    keep_best: bool = False
    """End with the policy of the best validation greedy accuracy (``data.val_size`` rows, checked
    at step 0, every ``eval_every`` steps and at the end; a tie keeps the earlier step), like
    transformers' ``load_best_model_at_end``: the held-out figures after RL and ``final/`` are then
    that policy's (the last step's held-out greedy accuracy is reported beside them)."""
    checkpoint_every: int = _f(10, ge=1)
    """Steps between checkpoints."""


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (``train.yaml`` lists ``train_schema`` first)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def validate(obj: Any, prefix: str = "") -> None:
    """Check every field of a (nested) config dataclass against its metadata limits.

    Raises:
        ConfigError: one line, e.g. ``algorithm.group_size=-1 is invalid: must be >= 2``.
    """
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    validate(v, f"{key}.{k}.")
            continue
        if value is None:
            continue
        meta = f.metadata
        checks = [("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                  ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")]
        for name, ok, sym in checks:
            if name in meta and not ok(value, meta[name]):
                raise ConfigError(f"{key}={value!r} is invalid: must be {sym} {meta[name]}")
        if "choices" in meta and value not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{key}={value!r} is invalid: allowed values are {allowed}")
    _check_cross_fields(obj, prefix)


def _check_registry_names(algo: AlgorithmConfig, prefix: str) -> None:
    """The algorithm's registry names (advantage, policy loss, aggregation, KL estimator) exist, also
    those of parts a setting turns off (a misspelt ``kl_estimator`` with ``kl_coef=0`` is found too).
    Imports the registries (torch): still before any expensive work."""
    from rl.advantages import ADVANTAGES
    from rl.kl import KL_ESTIMATORS
    from rl.losses import AGGREGATIONS, POLICY_LOSSES

    for key, registry in (("advantage", ADVANTAGES), ("policy_loss", POLICY_LOSSES),
                          ("loss_agg", AGGREGATIONS), ("kl_estimator", KL_ESTIMATORS)):
        value = getattr(algo, key)
        if value not in registry:
            raise ConfigError(f"{prefix}{key}={value!r} is invalid: allowed values are {', '.join(registry.names())} "
                              f"(the registered {registry.kind} names)")


def _check_cross_fields(obj: Any, prefix: str) -> None:
    """Invariants that span several fields (message says what to change)."""
    if isinstance(obj, AlgorithmConfig):
        _check_registry_names(obj, prefix)
    if isinstance(obj, AlgorithmConfig) and obj.micro_batch_size > obj.mini_batch_size:
        raise ConfigError(
            f"{prefix}micro_batch_size={obj.micro_batch_size} is invalid: must be <= "
            f"{prefix}mini_batch_size={obj.mini_batch_size}")
    if isinstance(obj, AlgorithmConfig) and obj.lr_schedule == "cosine" and obj.lr_decay_steps is None:
        raise ConfigError(f"{prefix}lr_decay_steps=None is invalid with {prefix}lr_schedule=cosine: "
                          "set it to the optimizer step where the decay ends")
    if isinstance(obj, RewardsConfig):
        for name, term in obj.terms.items():
            if (term.name is None) == (term._target_ is None):
                raise ConfigError(f"{prefix}terms.{name} is invalid: set exactly one of 'name' "
                                  "(a registered reward) or '_target_' (a dotted import path)")
    if isinstance(obj, DataConfig) and "{prompt}" not in obj.prompt_template:
        raise ConfigError(f"{prefix}prompt_template={obj.prompt_template!r} is invalid: it must contain "
                          "'{prompt}' where the problem goes")
    if isinstance(obj, TrainConfig) and obj.keep_best and obj.data.val_size == 0:
        raise ConfigError(f"{prefix}keep_best=true is invalid with {prefix}data.val_size=0: set "
                          f"{prefix}data.val_size to the number of validation problems (e.g. 96)")
    if isinstance(obj, BudgetConfig):
        limits = (obj.max_steps, obj.max_samples, obj.max_tokens, obj.max_flops, obj.max_seconds,
                  obj.pretrain_fraction)
        if all(v is None for v in limits):
            raise ConfigError(f"{prefix.rstrip('.')} is invalid: set at least one limit, e.g. "
                              f"{prefix}max_steps=100 (or pick an option: budget=smoke, budget=math)")
        if (obj.pretrain_flops is None) != (obj.pretrain_fraction is None):
            raise ConfigError(f"{prefix}pretrain_flops and {prefix}pretrain_fraction are invalid: "
                              "set both (a FLOP budget as a fraction of pre-training) or neither")


def to_config(cfg: DictConfig) -> TrainConfig:
    """Turn Hydra's composed config into a validated :class:`TrainConfig`."""
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, TrainConfig):
        raise ConfigError("the composed config is not a TrainConfig: train.yaml must list "
                          "'train_schema' first in its defaults")
    validate(obj)
    return obj
