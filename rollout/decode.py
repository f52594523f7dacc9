"""`StaticDecoder`: the rollout engine's decode step for `DSAForCausalLM`, with static shapes.

The model's own `forward` serves every call shape (training, prefill, replay, generate()) and
decides paths, chunks and slices from Python ints, so each decode step costs ~2,000 small ops
and `torch.compile` recompiles it for every new cache length. This step does the same arithmetic
for the one shape the engine needs (one new token per row) with shapes that never change inside
a micro-batch:

- compiled, attention spans the whole preallocated cache (B, capacity, .) (eager, the filled
  slots only: same arithmetic, cost that follows the context); the new entries are written with
  `index_copy_` at a slot given as a tensor, and slots that hold no token yet are masked through
  `cache.valid` (a query sees exactly the valid slots, itself included, which is the model's
  causal & not-padding rule at decode);
- sparse mode scores every slot with the lightning indexer and selects with the model's own
  `select_topk` (ties toward the lower position; under `torch.compile` its branch-free exact
  rule), then attends over the k gathered latents (MQA / absorbed form, `MLAttention.attend_gathered`);
  when fewer than k slots are valid this selects all of them, which is the model's dense attention;
  dense mode attends over all valid slots in the absorbed form (`MLAttention.attend_masked`);
- MoE layers route with the model's gate (`MoE.route`), then run every routed expert on every row
  and weight the rows by their (zero for unchosen) routing weights. Decode is bound by reading
  weights: once B x num_experts_per_tok >= n_routed_experts nearly every expert is read anyway, and
  the dense form has no data-dependent shapes (no sort, no `tolist`), so it compiles into one graph.
  The cost is E / k times the routed FLOPs (tiny preset: 2x of a small part).

Every projection is the model's module (`MLAttention.project`, the indexer, `kv_b`, norms), so the
step reads the live weights; only the experts' fused weights are copies, rebuilt when a weight
changes (`StaticDecoder.moe_weights`). Results equal the model's forward
to float rounding (tests: max |logit difference| ~1e-6, same selections and routes); the
teacher-forced consistency check (`rollout.consistency`) guards the recorded log-probs.

Speed (tiny preset, batch 64, one thread, CPU): eager, the step costs about what the model's
forward does (~2,000 small ops either way); `compile=True` wraps it in `torch.compile` (inductor;
needs a C++ compiler on CPU) and runs it ~2.4x faster than the forward (4.7 vs 11.8 ms). It is
compiled with dynamic shapes from the start, so a process compiles once (~1 min on two cores, ~8 s
from inductor's disk cache) and reuses the graph for every step, micro-batch, prompt length and
compaction (the engine never compacts below 2 rows: size 1 would be a specialisation, a recompile;
`RolloutEngine.warm_up` triggers the compile at start-up). The indexer's keys are written and
scored through the cache's own (B, d_I, capacity) storage: through the transposed view, inductor
copied the whole buffer at every step.
"""
from __future__ import annotations

import torch

from rl.policy.cache import DSACache
from rl.policy.indexer import index_scores, select_topk
from rl.policy.mla import MLAttention
from rl.policy.modeling import DSAForCausalLM
from rl.policy.moe import MoE
from rl.policy.sparse import AttentionContext
from rollout.params import EngineConfig


class StaticDecoder:
    """One decode step of a `DSAForCausalLM` over a `DSACache` (see the module docstring).

    `supports(model)` says whether a model can use it (native DSA models; anything else, e.g. a
    converted `dsa_llama`, decodes through its own forward)."""

    def __init__(self, model: DSAForCausalLM, compile: bool = EngineConfig.compile) -> None:
        self.model = model
        self.compiled = compile
        self._step = torch.compile(self._forward, dynamic=True) if compile else self._forward
        self._moe_src: list[tuple[torch.Tensor, int, int]] = []  # the weights fused: (tensor, version, data_ptr)
        self._moe_w: list[tuple[torch.Tensor, torch.Tensor] | None] = []

    def invalidate(self) -> None:
        """Forget the fused expert weights (the weights changed); the next step rebuilds them."""
        self._moe_src = []

    def refresh(self) -> None:
        """Rebuild the fused expert weights if a weight visibly changed: a tensor was replaced,
        copied into in place by `load_state_dict` (its version moved), or moved to a new
        storage by `.to()` / `.half()` (a new data pointer). Writes that bypass the version counter
        (a collective's in-place receive, `p.data.copy_`) are not visible here: after those, set
        `RolloutEngine.weight_version` (or call `invalidate`). The engine calls this once per
        micro-batch; the step itself reuses what it finds."""
        layers = self.model.model.layers
        params = [p for layer in layers if layer.is_moe for e in _experts(layer.ffn)
                  for p in (e.gate.weight, e.up.weight, e.down.weight)]
        fresh = len(params) == len(self._moe_src) and all(
            p is q and _version(p) == v and p.data_ptr() == ptr for p, (q, v, ptr) in zip(params, self._moe_src))
        if not fresh:
            with torch.no_grad():
                self._moe_w = [
                    (torch.cat([w for e in _experts(layer.ffn) for w in (e.gate.weight, e.up.weight)]),
                     torch.cat([e.down.weight for e in _experts(layer.ffn)], dim=1)) if layer.is_moe else None
                    for layer in layers]
            self._moe_src = [(p, _version(p), p.data_ptr()) for p in params]

    def moe_weights(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, the MoE experts' weights fused for `_moe_dense` (None for a dense FFN):
        w_in (sum 2 h_e, d) = [gate_1; up_1; ..] and w_out (d, sum h_e) = [down_1 ..], the shared
        expert last; built on first use and kept until `invalidate` or `refresh` finds a change.
        Concatenating them in every step cost 7% of an eager and 12% of a compiled engine call
        (64 rows x 40 tokens, one thread, A/B in one process). Memory: one more copy of the
        experts' weights."""
        if not self._moe_src:
            self.refresh()
        return self._moe_w

    @staticmethod
    def supports(model) -> bool:
        return isinstance(model, DSAForCausalLM)

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: DSACache,
        want_routes: bool = False, want_topk: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Feed one token per row and advance the cache by one slot.

        tokens, positions: (B,) long (RoPE positions of the new tokens); the new token of every row
        goes to slot `cache.seq_len` (< capacity). Returns logits (B, V) fp32, the routes
        (B, n_moe_layers, num_experts_per_tok) long when `want_routes` (MoE models), and the
        selections (B, n_layers, index_topk) long (slot positions ascending, -1 padded) when
        `want_topk` (sparse mode); else None.
        """
        slot = cache.seq_len
        if slot >= cache.capacity:
            raise ValueError(f"cache is full ({cache.capacity} slots); allocate it with room for every new token")
        slot_t = torch.tensor([slot], dtype=torch.long, device=tokens.device)
        if self.compiled:  # whole buffers: shapes stay fixed for the whole micro-batch
            lat, keys, valid = cache.latents, cache.index_keys, cache.valid
            # Never views: a view's guards test its base, which a later call's fresh tensor lacks
            # (a needless recompile).
            tokens, positions = tokens.clone(), positions.clone()
        else:  # eager: only the slots filled so far (views), so the cost follows the context
            n = slot + 1
            lat, keys, valid = [t[:, :n] for t in cache.latents], [t[:, :n] for t in cache.index_keys], cache.valid[:, :n]
        logits, routes, sel = self._step(tokens, positions, slot_t, lat, keys, valid, self.moe_weights(),
                                         want_routes, want_topk)
        cache.advance(1)
        return logits, routes, sel

    def _forward(self, tokens, positions, slot, latents, index_keys, valid, moe_w, want_routes: bool,
                 want_topk: bool):
        """The step proper: tokens/positions (B,), slot (1,) long; cache buffers mutated in place;
        moe_w: `moe_weights()`."""
        model = self.model
        cfg = model.config
        mode = cfg.attention_mode
        h = model.model.embed_tokens(tokens[:, None])  # (B, 1, d)
        valid.index_fill_(1, slot, True)
        pos = positions[:, None]  # (B, 1)
        rope, index_rope = model.rope_tables(h, pos)
        ctx = AttentionContext(start=0, key_valid=valid, mode=mode, rope=rope, index_rope=index_rope,
                               want_topk=want_topk, want_indexer_loss=False)
        allowed = valid[:, None, :]  # (B, 1, capacity)
        routes, sels = [], []
        for i, layer in enumerate(model.model.layers):
            a, sel = self._attention(layer.attn, layer.attn_norm(h), ctx, latents[i], index_keys[i], slot, allowed)
            if sel is not None:
                sels.append(sel)
            h = h + a
            x = layer.ffn_norm(h)
            if layer.is_moe:
                f, r = _moe_dense(layer.ffn, x, *moe_w[i])
                routes.append(r)
            else:
                f = layer.ffn(x)
            h = h + f
        logits = model.lm_head(model.model.norm(h))[:, 0].float()  # (B, V)
        out_routes = torch.cat(routes, dim=1) if want_routes and routes else None  # (B, n_moe, k)
        out_sel = torch.cat(sels, dim=1) if want_topk and sels else None  # (B, L, k)
        return logits, out_routes, out_sel

    @staticmethod
    def _attention(attn: MLAttention, x, ctx, latents, keys, slot, allowed):
        """x (B, 1, d); latents (B, cap, kv_lora+dr), keys (B, cap, d_I) buffers; allowed (B, 1, cap).
        Returns (out (B, 1, d), selection (B, 1, k) or None in dense mode)."""
        B = x.shape[0]
        p = attn.project(x, ctx)
        latents.index_copy_(1, slot, p["entry"].detach())
        keys_t = keys.transpose(1, 2)  # (B, d_I, cap): the cache's own contiguous storage
        keys_t.index_copy_(2, slot, p["index_k"].detach().transpose(1, 2))
        if ctx.mode == "sparse":
            scores = index_scores(p["index_q"], keys.float(), p["index_w"])  # (B, 1, cap)
            sel = select_topk(scores, allowed, attn.topk)  # (B, 1, k)
            o_lat = attn.attend_gathered(p["q_cat"], latents, sel)[0]  # (B, 1, H, kv_lora)
        else:
            sel = None
            q_cat = torch.cat([attn.kv_b(p["q_nope"], "absorb_query"), p["q_rope"]], dim=-1)  # (B, 1, H, kv_lora+dr)
            o_lat = attn.attend_masked(q_cat, latents, allowed)[0]
        o = attn.kv_b(o_lat, "expand_values")  # (B, 1, H, dv)
        return attn.o(o.reshape(B, 1, attn.n_heads * attn.dv)), sel


def _version(t: torch.Tensor) -> int:
    """The tensor's version counter (inference-mode tensors have none: 0)."""
    return 0 if t.is_inference() else t._version


def _experts(moe: MoE) -> list:
    """The routed experts, then the shared one (if any)."""
    return list(moe.experts) + ([moe.shared] if moe.shared is not None else [])


def _moe_dense(moe: MoE, x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, 1, d) -> (out (B, 1, d), routes (B, 1, k)): the gate's routing, then every expert
    (shared ones with weight 1, routed ones with their routing weight, 0 where not chosen) on every
    row as two matmuls over the experts' concatenated weights w_in, w_out (`moe_weights()`):
        out = sum_e w_e down_e(silu(gate_e x) * up_e x) = [down_1 .. down_n] [w_1 a_1; ..; w_n a_n]."""
    routes, weights = moe.route(x, None)  # (B, 1, k), (B, 1, k) fp32
    B = x.shape[0]
    experts = _experts(moe)
    widths = [e.gate.weight.shape[0] for e in experts]
    dense_w = torch.zeros(B, moe.n_experts, dtype=weights.dtype, device=x.device)
    dense_w = dense_w.scatter(-1, routes[:, 0], weights[:, 0])  # (B, E)
    if moe.shared is not None:
        dense_w = torch.cat([dense_w, dense_w.new_ones(B, 1)], dim=-1)  # (B, E + 1)
    a = torch.nn.functional.linear(x[:, 0], w_in).split([w for h in widths for w in (h, h)], dim=-1)
    acts = [torch.nn.functional.silu(a[2 * i]) * a[2 * i + 1] * dense_w[:, i: i + 1].to(x.dtype)
            for i in range(len(experts))]  # each (B, h_e)
    out = torch.nn.functional.linear(torch.cat(acts, dim=-1), w_out)  # (B, d)
    return out[:, None], routes
