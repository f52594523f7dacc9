"""Feed-forward blocks: SwiGLU, and DeepSeekMoE (shared + routed experts, top-k gating).

Gating (per token, E routed experts, k = num_experts_per_tok):
- 'sigmoid' (DeepSeek-V3): affinities a = sigmoid(W_g h); experts = top-k of (a + b), where b is the
  non-trained `e_score_correction_bias` buffer (V3's auxiliary-loss-free balancing; kept at 0 here
  unless a trainer updates it); weights = a[experts] / sum(a[experts]) * routed_scaling_factor.
- 'softmax' (DeepSeek-V2): a = softmax(W_g h); experts = top-k of a; weights normalised as above
  (V2 leaves them unnormalised: our departure, so both gates give weights summing to the scale).
Group-limited routing (V3: `n_group` = 8, `topk_group` = 4; default 1 = off): experts form n_group
equal groups, each group scores the sum of its two best (a + b), and only the topk_group best groups
may be chosen (`limit_to_groups`). `norm_topk_prob=False` skips the L1 normalisation (V3 normalises).
No auxiliary balance loss, no capacity limit (nothing is dropped).

Keep Routing: `forward(h, routes)` with given routes (B, T, k) uses those experts, with the gate's
current affinities as weights (so the gate still receives gradients); the group limit only shapes
a fresh choice, so replayed routes are used as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl.policy.configuration import DSAConfig


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def limit_to_groups(choice: torch.Tensor, n_group: int, topk_group: int) -> torch.Tensor:
    """Group-limited routing scores: choice (..., E) -> (..., E) with -inf outside the topk_group groups
    (of n_group contiguous groups of E / n_group experts) whose two best scores sum highest."""
    *lead, E = choice.shape
    grouped = choice.view(*lead, n_group, E // n_group)  # (..., G, E/G)
    group_score = grouped.topk(2, dim=-1).values.sum(-1)  # (..., G)
    keep = group_score.topk(topk_group, dim=-1).indices  # (..., topk_group)
    group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(-1, keep, True)  # (..., G)
    return grouped.masked_fill(~group_mask.unsqueeze(-1), float("-inf")).view(*lead, E)


class MoE(nn.Module):
    """Shared experts (always on) + top-k routed experts."""

    def __init__(self, config: DSAConfig) -> None:
        super().__init__()
        self.n_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.gate_kind = config.moe_gate
        self.scaling = config.routed_scaling_factor
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, self.n_experts, bias=False)
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts), persistent=True)
        self.experts = nn.ModuleList(
            SwiGLU(config.hidden_size, config.moe_intermediate_size) for _ in range(self.n_experts)
        )
        self.shared = (
            SwiGLU(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts > 0 else None
        )

    def route(self, h: torch.Tensor, routes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T, d) -> (routes (B, T, k) long, weights (B, T, k) fp32)."""
        logits = self.gate(h).float()  # (B, T, E)
        if self.gate_kind == "sigmoid":
            affinity = torch.sigmoid(logits)
            choice = affinity + self.e_score_correction_bias.float()
        else:
            affinity = torch.softmax(logits, dim=-1)
            choice = affinity
        if routes is None:
            if self.n_group > 1:
                choice = limit_to_groups(choice, self.n_group, self.topk_group)
            routes = choice.topk(self.top_k, dim=-1).indices
        weights = affinity.gather(-1, routes)
        if self.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights * self.scaling
        return routes, weights

    def forward(self, h: torch.Tensor, routes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, T, d); routes: optional (B, T, k) to enforce. Returns (out (B, T, d), routes).

        Dispatch by sorting the (token, slot) pairs by expert: each expert runs once on its
        contiguous rows (experts with no rows run on 0 rows, so every parameter joins every step's
        graph, as ZeRO-3's hooks expect), then a permutation puts the rows back; no scatter-add."""
        B, T, d = h.shape
        k = self.top_k
        routes, weights = self.route(h, routes)
        flat = h.reshape(B * T, d)
        pair_expert = routes.reshape(-1)  # (B*T*k,)
        order = torch.argsort(pair_expert, stable=True)
        counts = torch.bincount(pair_expert, minlength=self.n_experts).tolist()
        rows = flat.index_select(0, order // k)  # (B*T*k, d), grouped by expert
        ys = [expert(chunk) for expert, chunk in zip(self.experts, rows.split(counts), strict=True)]
        y_sorted = torch.cat(ys) * weights.reshape(-1)[order].to(h.dtype).unsqueeze(-1)
        y = torch.empty_like(y_sorted).index_copy(0, order, y_sorted)  # back to (token, slot) order
        out = y.view(B * T, k, d).sum(1)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(B, T, d), routes
