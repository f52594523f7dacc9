"""Shared helpers of the trainer / checkpoint / batch tests (imported by path, not collected).

``sample_trajectories`` is a deliberately plain sampler (a full forward per new token, no cache)
that records what the rollout engine records: the log-prob of each sampled token under the
truncated, renormalised distribution it was drawn from, the kept set (top-p), and the MoE routes
and DSA selections of each input token, taken from the forward that first saw it.
"""
from __future__ import annotations

import copy

import torch

from rl.config import AlgorithmConfig, DeepSpeedConfig
from rl.policy import DSAConfig, DSAForCausalLM
from rollout.types import Trajectory, pack_mask

VOCAB = 96


def tiny_policy(seed: int = 0, vocab_size: int = VOCAB, **overrides) -> DSAForCausalLM:
    """The tiny DSA preset at a small vocabulary, index_topk=8 so sparse attention is active."""
    torch.manual_seed(seed)
    cfg = DSAConfig.from_preset("tiny", vocab_size=vocab_size, index_topk=8, hidden_size=64,
                                q_lora_rank=32, kv_lora_rank=32, intermediate_size=128,
                                moe_intermediate_size=64, num_hidden_layers=3, **overrides)
    return DSAForCausalLM(cfg)


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(V,) logits -> (V,) bool kept set of nucleus sampling (smallest prefix of mass >= top_p)."""
    probs = torch.softmax(logits, -1)
    sorted_p, idx = probs.sort(descending=True)
    keep_sorted = (sorted_p.cumsum(0) - sorted_p) < top_p
    kept = torch.zeros_like(probs, dtype=torch.bool)
    kept[idx[keep_sorted]] = True
    return kept


@torch.no_grad()
def sample_trajectories(model: DSAForCausalLM, *, num_prompts: int = 2, group: int = 4, prompt_len: int = 6,
                        max_new: int = 10, top_p: float = 0.8, temperature: float = 1.0, seed: int = 0,
                        record_topk: bool = True) -> list[Trajectory]:
    model.eval()
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    out: list[Trajectory] = []
    for p in range(num_prompts):
        prompt = torch.randint(3, V, (prompt_len + p,), generator=g).tolist()
        for s in range(group):
            tokens = list(prompt)
            logps = [0.0] * len(prompt)
            masks = [torch.zeros(V, dtype=torch.bool)] * len(prompt)
            routes: list[torch.Tensor] = []
            sels: list[torch.Tensor] = []
            n_new = max_new - (s % 3)  # ragged lengths
            for _ in range(n_new):
                o = model(input_ids=torch.tensor([tokens]), use_cache=False, output_expert_routes=True,
                          output_topk_indices=record_topk)
                first = len(routes)  # positions first seen in this forward
                routes.extend(torch.stack(o.expert_routes, dim=2)[0, first:].unbind(0))  # (n_moe, k) each
                if record_topk:
                    sels.extend(torch.stack(o.topk_indices, dim=2)[0, first:].unbind(0))  # (n_layers, k) each
                x = o.logits[0, -1] / temperature
                kept = nucleus(x, top_p) if top_p < 1.0 else torch.ones(V, dtype=torch.bool)
                logq = torch.where(kept, x, float("-inf")).log_softmax(-1)
                tok = int(torch.multinomial(logq.exp(), 1, generator=g))
                tokens.append(tok)
                logps.append(float(logq[tok]))
                masks.append(kept)
            L = len(tokens)
            routes.append(torch.zeros_like(routes[0]))  # the last token was never an input
            loss_mask = torch.zeros(L, dtype=torch.bool)
            loss_mask[len(prompt):] = True
            traj = Trajectory(
                tokens=torch.tensor(tokens), prompt_len=len(prompt), loss_mask=loss_mask,
                logprobs=torch.tensor(logps, dtype=torch.float32), completion="", finish_reason="length",
                weight_version=0, prompt_index=p, sample_index=s,
                sampling_mask=pack_mask(torch.stack(masks)) if top_p < 1.0 else None,
                expert_routes=torch.stack(routes).to(torch.int16),
            )
            if record_topk:
                sels.append(torch.full_like(sels[0], -1))
                traj.topk_indices = torch.stack(sels).to(torch.int32)
            out.append(traj)
    return out


def autograd_update(trajs: list[Trajectory], adv: torch.Tensor, algo: AlgorithmConfig
                    ) -> tuple[dict[str, torch.Tensor], float]:
    """The textbook GRPO update on CPU in fp32, without DeepSpeed: the whole batch in one forward,
    the registered loss of ``rl.losses``, ``backward``, ``clip_grad_norm_``, one ``AdamW.step``
    (the oracle of tests/rl/test_trainer_oracle.py and tests/gpu). Returns (weights after, the
    gradient norm before clipping)."""
    from rl.batch import collate, kept_sets
    from rl.losses import get_aggregation, get_policy_loss, off_policy_sequence_mask
    from rl.policy.logprobs import masked_log_probs

    torch.manual_seed(0)  # the trainer seeds with its seed (0) before building the policy
    model = tiny_policy()  # tiny_policy reseeds: same weights as the trainer's factory
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    batch = collate(trajs, adv, vocab_size=VOCAB)
    kept = kept_sets(batch.sampling_mask, VOCAB) if algo.keep_sampling_mask else None

    def forward(m):
        return m(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids, use_cache=False,
                 expert_routes=batch.routes_per_layer() if algo.keep_routing else None,
                 topk_indices=batch.topk_per_layer() if algo.keep_indexing else None).logits

    model.train()
    logp = masked_log_probs(forward(model), batch.target_ids, kept, temperature=1.0)  # (B, N)
    ref_logp = None
    if algo.kl_coef > 0:
        with torch.no_grad():
            ref_logp = masked_log_probs(forward(ref), batch.target_ids, kept, temperature=1.0)
    seq_mask = off_policy_sequence_mask(logp, batch.old_logprobs, batch.advantages, batch.loss_mask,
                                        algo.off_policy_delta)
    num_units = get_aggregation(algo.loss_agg).units(batch.loss_mask.float()).clamp_min(1)
    loss, _ = get_policy_loss(algo.policy_loss)(
        logp, batch.old_logprobs, batch.advantages, batch.loss_mask, ref_logp=ref_logp, seq_mask=seq_mask,
        clip_low=algo.clip_low, clip_high=algo.clip_high, beta=algo.kl_coef, kl_estimator=algo.kl_estimator,
        aggregation=algo.loss_agg, norm_constant=1.0, num_units=num_units)
    opt = torch.optim.AdamW(model.parameters(), lr=algo.lr, weight_decay=algo.weight_decay)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), algo.grad_clip)
    opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, float(norm)


def fixed_advantages(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g)


def algo(**overrides) -> AlgorithmConfig:
    """A test AlgorithmConfig: large LR so one update moves weights visibly, no warm-up."""
    base = {"lr": 1e-2, "warmup_steps": 0, "mini_batch_size": 8, "micro_batch_size": 2, "kl_coef": 0.1,
                "off_policy_delta": 0.05, "keep_indexing": True}
    base.update(overrides)
    return AlgorithmConfig(**base)


def ds(stage: int = 0) -> DeepSpeedConfig:
    return DeepSpeedConfig(zero_stage=stage)


def one_update(stage: int, **algo_overrides) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """A fresh trainer at ZeRO ``stage``, one train_step on the fixed batch: (metrics, weights)."""
    from rl.trainer import Trainer

    trajs = sample_trajectories(tiny_policy(seed=0))
    trainer = Trainer(tiny_policy, algo(**algo_overrides), ds(stage))
    metrics = trainer.train_step(trajs, fixed_advantages(len(trajs)))
    return metrics, trainer.export_state_dict()


def zero_matrix_worker(rank: int, world: int, port: int, out: str, stages: list[int]) -> None:
    """torch.multiprocessing entry: rank of ``world`` runs :func:`one_update` for each stage;
    rank 0 saves ``{stage: (metrics, weights)}`` to ``out``."""
    from rl.distributed import set_rank_env

    torch.set_num_threads(1)
    set_rank_env(rank, world, rank, "127.0.0.1", port)
    results = {stage: one_update(stage) for stage in stages}
    if rank == 0:
        torch.save(results, out)
