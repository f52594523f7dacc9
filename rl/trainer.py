"""The GRPO learner: a DeepSpeed engine around the DSA policy, one ``train_step`` per rollout batch.

``Trainer.train_step(trajectories, advantages)`` collates the batch (``rl.batch``), then for
``epochs_per_batch`` passes over it, in shuffled mini-batches of ``mini_batch_size`` trajectories
(one optimizer update each), cut into micro-batches of ``micro_batch_size`` per rank:

1. recompute log pi_theta of the sampled tokens under the sampler's conditions: its temperature,
   its recorded kept sets (Keep Sampling Mask), its MoE routes (Keep Routing) and, optionally,
   its DSA selections (keep indexing); each a switch in ``AlgorithmConfig``;
2. the same for log pi_ref from a frozen copy of the initial policy, only when ``kl_coef > 0``;
3. the off-policy sequence mask and the policy loss, looked up by name in the registries (the
   trainer never branches on a loss name), plus ``indexer_loss_weight`` x the DSA indexer KL;
4. backward through DeepSpeed; one ``engine.step()`` per mini-batch (clipping, AdamW, LR schedule).

Two exact savings: a row whose advantage is 0 (a GRPO group with equal rewards) is not forwarded
when nothing else would train on it (``kl_coef == 0``, no indexer loss, and a policy loss marked
``zero_at_zero_advantage``): its gradient is exactly 0, and it still counts in the loss
normalisers, so the update is unchanged. Micro-batches are cut from length-sorted rows, so each is
padded only to its own longest row.

Data parallelism: every rank receives the whole rollout batch (it is small next to the model),
draws the same shuffle, and trains on rows ``rank::world`` of each mini-batch. Every rank runs the
same number of micro-batches (a rank short of rows runs a filler micro-batch with an empty loss
mask), as ZeRO's collectives require. Losses are normalised by the *global* mini-batch's
aggregation units and multiplied by the world size (DeepSpeed averages gradients over ranks), so
the update equals the single-process one up to float summation order, whatever the sharding.

Departures from the paper (V3.2 discloses none of these): Keep Routing and keep indexing are also
applied to pi_ref; pi_ref is the policy as passed to the constructor (not refreshed); the indexer
loss runs alongside RL with its own weight, normalised per real token of the mini-batch.
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rl.batch import TrainBatch, collate, kept_sets
from rl.config import AlgorithmConfig, DeepSpeedConfig, RolloutConfig
from rl.losses import get_aggregation, get_policy_loss, off_policy_sequence_mask
from rl.policy.indexer_loss import indexer_parameters
from rl.policy.logprobs import entropy_from_logits, masked_log_probs
from rl.prefix import PackedGroups, pack_groups, packed_logits, prefix_groups
from rl.process_group import init_distributed
from rollout.types import Trajectory


def lr_factor(step: int, *, warmup_steps: int, schedule: str, decay_steps: int | None,
              min_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    ``constant`` (1) or ``cosine``: ``min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2`` with
    ``p = (step - warmup_steps) / (decay_steps - warmup_steps)`` clipped to [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, (decay_steps or 1) - warmup_steps)
        p = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    raise ValueError(f"unknown lr_schedule {schedule!r}; allowed: constant, cosine")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def register_block_parameters(module: nn.Module) -> None:
    """ZeRO-3: make every transformer block gather all of its parameters for its whole forward
    and backward.

    The DSA attention reads weights of its sub-layers directly (``kv_b.weight`` for the absorbed
    MLA) and returns a dataclass, which ZeRO-3's per-module hooks cannot see through; registering
    each block's parameters as external parameters of the block (the classes listed in the
    model's ``_no_split_modules``) keeps them gathered while the block runs, in both passes.
    """
    import deepspeed

    block_names = set(getattr(module, "_no_split_modules", None) or [])
    for m in module.modules():
        if type(m).__name__ in block_names:
            for p in m.parameters():
                deepspeed.zero.register_external_parameter(m, p)


def _record_stage0_grad_norm(engine: Any) -> None:
    """Make a ZeRO-0 fp32 engine keep the gradient norm it clips with (ZeRO 1-3 and bf16 do)."""
    from deepspeed.runtime.utils import clip_grad_norm_

    def clip_and_record() -> None:
        engine._global_grad_norm = clip_grad_norm_(parameters=engine.module.parameters(),
                                                   max_norm=engine.gradient_clipping(), mpu=engine.mpu)

    engine.clip_fp32_gradients = clip_and_record


class Trainer:
    """DeepSpeed GRPO trainer of one data-parallel rank (module docstring).

    Args:
        policy: the policy module (a ``transformers`` causal LM such as ``DSAForCausalLM``), or a
            zero-argument factory called after seeding (identical weights on every rank).
        algo: loss, clipping, KL, masks, optimizer and batch sizes.
        ds: ZeRO stage and offload (``num_processes`` is read by ``rl.distributed.make_trainer``).
        temperature: the sampler's temperature (log-probs are of ``softmax(logits / T)``).
        norm_constant: C of the ``seq_sum`` aggregation (e.g. ``rollout.max_new_tokens``).
        seed: seeds python/numpy/torch and the mini-batch shuffle.
        pad_id: token id used for padding.
    """

    def __init__(self, policy: nn.Module | Callable[[], nn.Module], algo: AlgorithmConfig,
                 ds: DeepSpeedConfig, *, temperature: float = RolloutConfig.temperature, norm_constant: float = 1.0,
                 seed: int = 0, pad_id: int = 0) -> None:
        import deepspeed

        init_distributed()
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        self.algo, self.ds = algo, ds
        self.temperature, self.norm_constant, self.pad_id = temperature, norm_constant, pad_id
        seed_everything(seed)
        model = policy if isinstance(policy, nn.Module) else policy()
        if algo.indexer_loss_weight == 0:
            # Only the indexer loss gives the lightning indexers a gradient. Left in AdamW they would
            # still shrink by the decoupled weight decay (DeepSpeed decays every parameter it holds,
            # with or without a gradient): freeze them (found by tests/rl/test_trainer_oracle.py).
            for p in indexer_parameters(model):
                p.requires_grad_(False)
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(model.config.vocab_size)
        self.has_moe = bool(getattr(model.config, "moe_layer_indices", []))
        self._policy_loss = get_policy_loss(algo.policy_loss)
        # Rows with advantage 0 add exactly nothing to the update (no KL, no indexer loss, a loss
        # that vanishes at A = 0): skip their forward and backward, keep them in the normalisers.
        self._skip_zero_adv = (getattr(self._policy_loss, "zero_at_zero_advantage", False)
                               and algo.kl_coef == 0 and algo.indexer_loss_weight == 0)
        self._aggregation = get_aggregation(algo.loss_agg)
        self._shuffle = torch.Generator().manual_seed(seed)
        ref = copy.deepcopy(model).eval().requires_grad_(False) if algo.kl_coef > 0 else None

        cfg = self._deepspeed_config()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=algo.lr,
                                      weight_decay=algo.weight_decay)
        schedule = partial(lr_factor, warmup_steps=algo.warmup_steps, schedule=algo.lr_schedule,
                           decay_steps=algo.lr_decay_steps, min_ratio=algo.min_lr_ratio)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=cfg,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
        if ds.zero_stage == 3:
            register_block_parameters(self.engine.module)
        if ds.zero_stage == 0:
            _record_stage0_grad_norm(self.engine)
        self.device = self.engine.device
        self.ref = None
        if ref is not None:
            if ds.zero_stage == 3:  # partition the frozen copy too (no optimizer: inference engine)
                ref_cfg = {k: v for k, v in cfg.items() if k in ("train_micro_batch_size_per_gpu", "bf16",
                                                                  "fp16", "zero_optimization")}
                self.ref = deepspeed.initialize(model=ref, config=ref_cfg)[0]
                register_block_parameters(self.ref.module)
            else:
                self.ref = ref.to(self.device)
            self.ref.eval()

    # ---- set-up -----------------------------------------------------------------------------------
    def _deepspeed_config(self) -> dict[str, Any]:
        zero: dict[str, Any] = {"stage": self.ds.zero_stage}
        if self.ds.offload_optimizer and self.ds.zero_stage >= 1:
            zero["offload_optimizer"] = {"device": "cpu"}
        if self.ds.offload_params and self.ds.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
        return {
            "train_micro_batch_size_per_gpu": self.algo.micro_batch_size,
            "gradient_accumulation_steps": 1,
            # We own the accumulation boundary: backward() only accumulates, each step() updates.
            # Mini-batches may hold different numbers of micro-batches (a ragged last one).
            "managed_gradient_accumulation": False,
            "gradient_clipping": self.algo.grad_clip,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,  # a torch.optim.AdamW object: no JIT compile
            "zero_force_ds_cpu_optimizer": False,
            "bf16": {"enabled": self.dtype == torch.bfloat16},
            "fp16": {"enabled": self.dtype == torch.float16},
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }

    @property
    def module(self) -> nn.Module:
        """The policy module (parameters partitioned under ZeRO-3: use ``export_state_dict``)."""
        return self.engine.module

    @property
    def global_step(self) -> int:
        """Optimizer updates taken so far (restored by ``load``)."""
        return int(self.engine.global_steps)

    def collate(self, trajectories: Sequence[Trajectory], advantages: Tensor | Sequence[float]) -> TrainBatch:
        """The :class:`~rl.batch.TrainBatch` of this trainer's vocabulary and padding id."""
        return collate(trajectories, advantages, vocab_size=self.vocab_size, pad_id=self.pad_id)

    # ---- one micro-batch ----------------------------------------------------------------------------
    def _forward(self, model: Any, mb: TrainBatch, *, indexer_loss: bool) -> Any:
        return model(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                     position_ids=mb.position_ids, use_cache=False,
                     expert_routes=mb.routes_per_layer() if self.algo.keep_routing else None,
                     topk_indices=mb.topk_per_layer() if self.algo.keep_indexing else None,
                     output_indexer_loss=indexer_loss)

    def _check_records(self, batch: TrainBatch) -> None:
        if self.algo.keep_routing and self.has_moe and batch.expert_routes is None:
            raise ValueError("algorithm.keep_routing=true but the trajectories carry no expert routes: "
                             "set rollout.record_routes=true (or algorithm.keep_routing=false)")
        if self.algo.keep_indexing and batch.topk_indices is None:
            raise ValueError("algorithm.keep_indexing=true but the trajectories carry no DSA selections: "
                             "set rollout.record_topk=true (or algorithm.keep_indexing=false)")

    def log_probs(self, mb: TrainBatch, model: Any = None) -> Tensor:
        """(b, N) fp32 log-probs of ``mb``'s targets under ``model`` (default: the policy), with
        the configured Keep Sampling Mask / Routing / indexing, without gradient."""
        mb = mb.to(self.device)
        with torch.no_grad():
            out = self._forward(self.engine if model is None else model, mb, indexer_loss=False)
            return masked_log_probs(out.logits, mb.target_ids, self._kept(mb.sampling_mask),
                                    temperature=self.temperature)

    def _packed(self, mb: TrainBatch, *, indexer_loss: bool) -> PackedGroups | None:
        """``mb`` packed one row per shared prompt when ``algorithm.share_prefix`` is on and that
        saves work (``rl.prefix``), else None (the plain forward)."""
        if not self.algo.share_prefix or indexer_loss:
            return None
        return pack_groups(mb)

    def _logp(self, model: Any, mb: TrainBatch, pg: PackedGroups | None, kept: Tensor | None, *,
              indexer_loss: bool = False, entropy: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(log-probs (b, N) of ``mb``'s targets, or (b, C) of ``pg.rows``'; their entropy (no
        gradient) if asked; the indexer loss if asked) under ``model``. ``kept``: the kept sets of
        those targets (``_kept``), computed once for the policy and the reference."""
        if pg is None:
            out = self._forward(model, mb, indexer_loss=indexer_loss)
            logits, targets = out.logits, mb.target_ids
        else:
            logits = packed_logits(model, pg, keep_routing=self.algo.keep_routing,
                                   keep_indexing=self.algo.keep_indexing)
            targets = pg.target_ids
        logp = masked_log_probs(logits, targets, kept, temperature=self.temperature)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = entropy_from_logits(logits.detach(), kept, temperature=self.temperature)
        if pg is not None:
            return pg.unpack(logp), (pg.unpack(ent) if ent is not None else None), None
        return logp, ent, out.indexer_loss

    def _kept(self, sampling_mask: Tensor | None) -> Tensor | None:
        """The Keep Sampling Mask's kept sets of bit-packed ``sampling_mask`` (``rl.batch.kept_sets``),
        or None when it is off or nothing was truncated."""
        if not self.algo.keep_sampling_mask or sampling_mask is None:
            return None
        return kept_sets(sampling_mask, self.vocab_size)

    def _micro_step(self, mb: TrainBatch, num_units: Tensor, indexer_scale: float,
                    acc: _Metrics, record_mismatch: bool, filler: bool) -> None:
        algo = self.algo
        want_idx = algo.indexer_loss_weight > 0
        pg = self._packed(mb, indexer_loss=want_idx)
        view = mb if pg is None else pg.rows  # the per-position tensors the log-probs line up with
        kept = self._kept(mb.sampling_mask if pg is None else pg.sampling_mask)
        logp, entropy, indexer_loss = self._logp(self.engine, mb, pg, kept, indexer_loss=want_idx, entropy=True)
        ref_logp = None
        if self.ref is not None:
            with torch.no_grad():
                ref_logp = self._logp(self.ref, mb, pg, kept)[0]
        seq_mask = (off_policy_sequence_mask(logp, view.old_logprobs, mb.advantages, view.loss_mask,
                                             algo.off_policy_delta) if algo.off_policy_mask else None)
        loss, metrics = self._policy_loss(
            logp, view.old_logprobs, mb.advantages, view.loss_mask, ref_logp=ref_logp, seq_mask=seq_mask,
            clip_low=algo.clip_low, clip_high=algo.clip_high, beta=algo.kl_coef,
            kl_estimator=algo.kl_estimator, aggregation=algo.loss_agg, norm_constant=self.norm_constant,
            num_units=num_units, entropy=entropy)
        total = loss
        if want_idx:
            total = total + algo.indexer_loss_weight * indexer_scale * indexer_loss
            acc.add("indexer_loss", indexer_loss.detach() * indexer_scale)
        # DeepSpeed averages gradients over ranks; our losses are already global-mini-batch sums.
        self.engine.backward(total * self.world_size)
        acc.micro(view, logp.detach(), total.detach(), metrics, record_mismatch, filler,
                  num_tokens=mb.num_tokens)

    # ---- the update ---------------------------------------------------------------------------------
    def train_step(self, trajectories: Sequence[Trajectory], advantages: Tensor | Sequence[float]
                   ) -> dict[str, float]:
        """Train on one rollout batch; returns metrics (floats, identical on every rank).

        Args:
            trajectories: the whole rollout batch (every rank gets all of it).
            advantages: (len(trajectories),) per-sequence advantages.

        Metrics: ``loss`` (policy loss + weighted indexer loss, mean over updates), ``pg_loss``,
        ``kl``, ``entropy``, ``ratio_mean/min/max``, ``clip_frac_low/high``, ``masked_frac``
        (token or sequence means over the step), ``indexer_loss``, ``grad_norm`` (mean over
        updates, before clipping), ``lr`` (of the last update), ``logp_mismatch_mean/max``
        (|log pi_theta - log pi_old| on the first mini-batch, before any update: the sampler /
        trainer mismatch), ``num_updates``, ``num_tokens`` and ``tokens_per_s`` (real tokens
        forwarded, all ranks and epochs), ``skipped_frac`` (rows not forwarded because their
        advantage is 0 and so is everything they would add; the token statistics above are over
        the forwarded rows).
        """
        start = time.perf_counter()
        batch = self.collate(trajectories, advantages)
        self._check_records(batch)
        algo, W = self.algo, self.world_size
        n = len(batch)
        lengths = batch.attention_mask.sum(-1)  # (n,)
        skipped = 0
        acc = _Metrics(self.device)
        grad_norms: list[float] = []
        lr = float("nan")
        first = True
        self.engine.train()
        for _ in range(algo.epochs_per_batch):
            if algo.group_minibatches:  # whole groups in shuffled order, each group's rows in order
                gid = prefix_groups(batch)
                rank = torch.argsort(torch.randperm(int(gid.max()) + 1, generator=self._shuffle))
                order = torch.argsort(rank[gid], stable=True)
            else:
                order = torch.randperm(n, generator=self._shuffle)
            for lo in range(0, n, algo.mini_batch_size):
                mini = order[lo: lo + algo.mini_batch_size]
                num_units = self._aggregation.units(batch.loss_mask[mini].float()).clamp_min(1).to(self.device)
                real_tokens = max(1, int(batch.attention_mask[mini].sum()))
                live = mini[batch.advantages[mini] != 0] if self._skip_zero_adv else mini
                skipped += len(mini) - len(live)
                mine = live[self.rank::W]
                # Micro-batches of similar lengths: each is cut to its longest row, so sorting by
                # length trims padding (the loss is a sum over the mini-batch: order is free).
                mine = mine[torch.argsort(lengths[mine], stable=True)]
                # At least one (filler) micro-batch: AdamW still steps on zero gradients (momentum).
                n_micro = max(1, math.ceil(math.ceil(len(live) / W) / algo.micro_batch_size))
                for k in range(n_micro):
                    rows = mine[k * algo.micro_batch_size: (k + 1) * algo.micro_batch_size]
                    filler = len(rows) == 0
                    mb = batch.select(mini[:1]).without_loss() if filler else batch.select(rows)
                    scale = 0.0 if filler else float(mb.num_tokens) / real_tokens
                    self._micro_step(mb.to(self.device), num_units, scale, acc, record_mismatch=first,
                                     filler=filler)
                lr = float(self.engine.get_lr()[0])
                self.engine.step()
                norm = self.engine.get_global_grad_norm()
                grad_norms.append(float(norm) if norm is not None else float("nan"))
                first = False
        out = acc.finalize(num_updates=len(grad_norms))
        out.update(grad_norm=sum(grad_norms) / max(1, len(grad_norms)), lr=lr, num_updates=len(grad_norms),
                   skipped_frac=skipped / (n * algo.epochs_per_batch))
        out["tokens_per_s"] = out["num_tokens"] / max(time.perf_counter() - start, 1e-9)
        return out

    # ---- checkpoints and weights (rl.checkpoint does the work) ----------------------------------------
    def save(self, directory: str | Path, *, step: int, extra: dict[str, Any] | None = None,
             keep: int | None = None) -> Path:
        """Atomically save everything to resume (collective). See :func:`rl.checkpoint.save`."""
        from rl import checkpoint

        return checkpoint.save(self, directory, step=step, extra=extra, keep=keep)

    def load(self, directory: str | Path, tag: str | None = None) -> tuple[int, dict[str, Any]]:
        """Resume from ``directory``'s latest (or ``tag``) checkpoint; returns (step, extra)."""
        from rl import checkpoint

        return checkpoint.load(self, directory, tag=tag)

    def export_state_dict(self) -> dict[str, Tensor]:
        """Full policy weights on CPU (collective; gathered under ZeRO-3). Empty on ranks > 0."""
        from rl import checkpoint

        return checkpoint.gather_state_dict(self.engine.module, rank0_only=True)

    def export_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """Write the policy as a ``save_pretrained`` directory (+ tokenizer), also under ZeRO-3."""
        from rl import checkpoint

        return checkpoint.export_pretrained(self.engine.module, directory, tokenizer=tokenizer)

    def rng_generators(self) -> dict[str, torch.Generator]:
        """The trainer's own generators (saved and restored with the checkpoint)."""
        return {"shuffle": self._shuffle}


_TOKEN_MEANS = ("ratio_mean", "clip_frac_low", "clip_frac_high", "kl", "entropy")


class _Metrics:
    """Sums of per-micro-batch metrics, reduced over ranks once at the end (one host sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.maxes: dict[str, Tensor] = {}

    def add(self, key: str, value: Tensor) -> None:
        v = value.detach().to(self.device, torch.float64)
        self.sums[key] = self.sums[key] + v if key in self.sums else v

    def max(self, key: str, value: Tensor) -> None:
        v = value.detach().to(self.device, torch.float64)
        self.maxes[key] = torch.maximum(self.maxes[key], v) if key in self.maxes else v

    def micro(self, mb: TrainBatch, logp: Tensor, total: Tensor, metrics: dict[str, Tensor],
              record_mismatch: bool, filler: bool, num_tokens: Tensor) -> None:
        """Add one micro-batch: ``logp`` (b, N) detached and aligned with ``mb``, ``total`` its
        loss, ``metrics`` the policy loss's, ``num_tokens`` its trajectories' real tokens; a
        ``filler`` micro-batch (no trained rows) adds no tokens."""
        valid = mb.loss_mask
        n_tok = valid.sum()
        rows = valid.any(-1).sum()
        self.add("loss", total)
        self.add("pg_loss", metrics["pg_loss"])
        self.add("tokens_trained", n_tok)
        self.add("rows", rows)
        self.add("num_tokens", num_tokens * (0 if filler else 1))
        self.add("masked_rows", metrics["masked_frac"] * rows)
        for key in _TOKEN_MEANS:
            if key in metrics:
                self.add(key, metrics[key] * n_tok)
        # No device sync here: a micro-batch without trained tokens contributes -inf to the maxima.
        none = float("-inf")
        self.max("ratio_max", torch.where(n_tok > 0, metrics["ratio_max"], none))
        self.max("neg_ratio_min", torch.where(n_tok > 0, -metrics["ratio_min"], none))
        if record_mismatch:
            diff = torch.where(valid, (logp - mb.old_logprobs).abs(), 0.0)  # (b, N)
            self.add("mismatch_sum", diff.sum())
            self.add("mismatch_tokens", n_tok)
            self.max("mismatch_max", diff.amax())

    def finalize(self, num_updates: int) -> dict[str, float]:
        keys = sorted(self.sums)
        mkeys = sorted(self.maxes)
        s = torch.stack([self.sums[k] for k in keys])
        m = torch.stack([self.maxes[k] for k in mkeys])
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(s)
            torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
        sums = dict(zip(keys, s.tolist()))
        maxes = dict(zip(mkeys, m.tolist()))
        tok = max(sums["tokens_trained"], 1.0)
        out = {
            "loss": sums["loss"] / max(num_updates, 1),
            "pg_loss": sums["pg_loss"] / max(num_updates, 1),
            "masked_frac": sums["masked_rows"] / max(sums["rows"], 1.0),
            "ratio_max": maxes["ratio_max"],
            "ratio_min": -maxes["neg_ratio_min"],
            "num_tokens": sums["num_tokens"],
            "tokens_trained": sums["tokens_trained"],
        }
        for key in _TOKEN_MEANS:
            if key in sums:
                out[key] = sums[key] / tok
        if "indexer_loss" in sums:
            out["indexer_loss"] = sums["indexer_loss"] / max(num_updates, 1)
        if "mismatch_sum" in sums:
            out["logp_mismatch_mean"] = sums["mismatch_sum"] / max(sums["mismatch_tokens"], 1.0)
            out["logp_mismatch_max"] = maxes["mismatch_max"]
        return out
