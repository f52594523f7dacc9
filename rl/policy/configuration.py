"""`DSAConfig`: the shape and behaviour of a DeepSeek-Sparse-Attention policy, plus a preset table.

The config is a transformers dataclass-style `PreTrainedConfig` (model_type "dsa"). Each field has
its docstring directly under it. The constructor defaults ARE the `tiny` preset (the embedded
default policy: ~1-3 M parameters, MoE layers, `index_topk` = 32 so that sparse attention is active
on math sequences of 64-200 tokens); every other preset in `PRESETS` lists only what differs.

Departures from DeepSeek-V3.2 (documented choices, see also mla.py / indexer.py / moe.py), where the
defaults differ from V3.2's layout; a loaded V3/V3.2 checkpoint (`rl.policy.deepseek`) sets the
V3.2 values, so it computes V3.2's logits:
- RoPE is half-split (non-interleaved) everywhere, in MLA too. V3.2's MLA interleaves: the loader
  permutes the RoPE rows of q_b / kv_a once (an exact re-layout), so no interleaved code path exists.
- RoPE is plain unless `rope_yarn` is set (V3.2: YaRN, factor 40).
- The indexer applies RoPE to the first `index_rope_dim` dims (default half of its head dims; V3.2:
  qk_rope_head_dim = 64 of 128, with MLA's tables).
- MoE gating is not group-limited by default (`n_group` = 1); V3.2: 8 groups, top 4.
- No multi-token-prediction module, no FP8 compute, no Hadamard rotation (orthogonal: a no-op in fp32).
"""
from __future__ import annotations

from typing import Any, ClassVar

from transformers import PreTrainedConfig

from rl.policy_defaults import ATTENTION_MODES, INDEX_HEAD_DIM, INDEX_N_HEADS, INDEXER_LOSS_WEIGHT

MOE_GATES = ("sigmoid", "softmax")


class DSASparseConfig(PreTrainedConfig):
    """The DSA settings every DSA policy's config has (the native `DSAConfig` and the converted
    `DSALlamaConfig`): the lightning indexer's shape, k, the attention mode and the indexer loss."""

    index_n_heads: int = INDEX_N_HEADS
    """Lightning-indexer query heads H_I."""
    index_head_dim: int = INDEX_HEAD_DIM
    """Lightning-indexer head dim d_I (RoPE on the first half). Must be even and d_I/2 even."""
    index_topk: int = 32
    """k: keys each query attends to in sparse mode."""
    attention_mode: str = ATTENTION_MODES[0]
    """'sparse' (DSA: indexer + top-k) or 'dense' (full causal attention, the oracle); per-call override."""
    attention_chunk_size: int = 1024
    """Query rows processed at once per layer in prefill/training (bounds the B x C x S score memory)."""
    indexer_loss_weight: float = INDEXER_LOSS_WEIGHT
    """Weight of the indexer KL loss when it is added to `output.loss` (V3.2 does not disclose it)."""

    def __post_init__(self, **kwargs: Any) -> None:
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode={self.attention_mode!r}: allowed {ATTENTION_MODES}")
        # The indexer's RoPE covers index_rope_head_dim dims when a config has that field set (the
        # native policy's V3.2 layout), else the first half of index_head_dim.
        if getattr(self, "index_rope_head_dim", None) is None and self.index_head_dim % 4 != 0:
            raise ValueError(f"index_head_dim={self.index_head_dim}: must be a multiple of 4 (half-split RoPE "
                             "on the first half needs an even rope width)")
        if self.index_topk < 1 or self.attention_chunk_size < 1:
            raise ValueError("index_topk and attention_chunk_size must be >= 1")
        super().__post_init__(**kwargs)


class DSAConfig(DSASparseConfig):
    """Configuration of `DSAForCausalLM`. Defaults = the `tiny` preset."""

    model_type: ClassVar[str] = "dsa"

    vocab_size: int = 512
    """Vocabulary size (a placeholder: callers pass vocab_size=len(tokenizer))."""
    hidden_size: int = 128
    """Residual stream width d."""
    num_hidden_layers: int = 4
    """Number of decoder blocks."""
    num_attention_heads: int = 4
    """Main (MLA) attention heads H."""
    q_lora_rank: int = 64
    """Rank of the compressed query latent c_q = RMSNorm(W_qa h); the indexer's queries read it too."""
    kv_lora_rank: int = 64
    """Width of the cached KV latent c_kv."""
    qk_nope_head_dim: int = 32
    """Per-head query/key dims without RoPE."""
    qk_rope_head_dim: int = 16
    """Per-head RoPE dims; the RoPE key (this many dims) is shared by all heads and cached."""
    v_head_dim: int = 32
    """Per-head value dims."""
    intermediate_size: int = 384
    """Hidden width of the dense SwiGLU FFN (layers < first_k_dense_replace, or all when no MoE)."""
    moe_intermediate_size: int = 128
    """Hidden width of each routed and shared expert."""
    n_routed_experts: int = 4
    """Routed experts per MoE layer; 0 disables MoE (every layer gets the dense FFN)."""
    n_shared_experts: int = 1
    """Always-on shared experts per MoE layer."""
    num_experts_per_tok: int = 2
    """Routed experts chosen per token (top-k gating)."""
    first_k_dense_replace: int = 1
    """The first this-many layers use the dense FFN instead of MoE."""
    moe_gate: str = "sigmoid"
    """'sigmoid' (V3: sigmoid affinities, top-k on affinity + bias) or 'softmax' (V2)."""
    routed_scaling_factor: float = 1.0
    """Multiplier on the (L1-normalised) routed expert weights (V3: 2.5)."""
    n_group: int = 1
    """Expert groups of group-limited routing: tokens pick experts only from the `topk_group` groups with
    the largest sum of their two best (biased) affinities (V3: 8). 1 = no group limit."""
    topk_group: int = 1
    """Groups each token may route to (V3: 4); at most n_group."""
    norm_topk_prob: bool = True
    """L1-normalise the chosen experts' weights before `routed_scaling_factor` (V3: true)."""
    mlp_layer_types: list[str] | None = None
    """Per layer 'dense' (SwiGLU) or 'sparse' (MoE); None = first_k_dense_replace dense, the rest MoE."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm (and the indexer key LayerNorm)."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rope_yarn: dict[str, Any] | None = None
    """YaRN context extension of every RoPE table (keys: factor, original_max_position_embeddings,
    beta_fast, beta_slow, mscale, mscale_all_dim, optional attention_factor / truncate); None = plain RoPE."""
    index_rope_head_dim: int | None = None
    """RoPE dims of the indexer (its first this-many dims); None = index_head_dim / 2. V3.2 layout:
    qk_rope_head_dim (then the indexer shares MLA's rotation tables)."""
    max_position_embeddings: int = 4096
    """Longest context the presets are meant for (informational: RoPE is computed on the fly)."""
    initializer_range: float = 0.02
    """Std of the normal init of linear and embedding weights."""
    tie_word_embeddings: bool = False
    """Untied LM head (tying is not supported)."""
    use_cache: bool = True
    """Return a decode cache from forward by default (generate() relies on it)."""
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.moe_gate not in MOE_GATES:
            raise ValueError(f"moe_gate={self.moe_gate!r}: allowed {MOE_GATES}")
        if self.qk_rope_head_dim % 2 != 0:
            raise ValueError(f"qk_rope_head_dim={self.qk_rope_head_dim}: must be even")
        if self.n_routed_experts > 0 and not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok}: must be in "
                             f"[1, n_routed_experts={self.n_routed_experts}]")
        if self.n_group < 1 or not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"n_group={self.n_group}, topk_group={self.topk_group}: need 1 <= topk_group <= n_group")
        if self.n_group > 1 and (self.n_routed_experts % self.n_group or self.n_routed_experts // self.n_group < 2):
            raise ValueError(f"n_group={self.n_group}: must divide n_routed_experts={self.n_routed_experts} into "
                             "groups of at least 2 experts")
        if self.mlp_layer_types is not None and (len(self.mlp_layer_types) != self.num_hidden_layers or
                                                 set(self.mlp_layer_types) - {"dense", "sparse"}):
            raise ValueError(f"mlp_layer_types={self.mlp_layer_types}: need one 'dense'/'sparse' per layer "
                             f"({self.num_hidden_layers})")
        if self.index_rope_head_dim is not None and (self.index_rope_head_dim % 2 or
                                                     not 0 < self.index_rope_head_dim <= self.index_head_dim):
            raise ValueError(f"index_rope_head_dim={self.index_rope_head_dim}: must be even and in "
                             f"(0, index_head_dim={self.index_head_dim}]")
        if self.rope_yarn is not None and not {"factor", "original_max_position_embeddings"} <= set(self.rope_yarn):
            raise ValueError(f"rope_yarn={self.rope_yarn}: needs 'factor' and 'original_max_position_embeddings'")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True is not supported by DSAForCausalLM")
        super().__post_init__(**kwargs)

    # ---- derived shapes -------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width of the non-absorbed attention: nope + rope."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Width of one cached MLA entry [c_kv; k_rope] (V3.2: 512 + 64 = 576)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def index_rope_dim(self) -> int:
        """RoPE dims of the indexer: `index_rope_head_dim`, or half of index_head_dim."""
        return self.index_rope_head_dim or self.index_head_dim // 2

    @property
    def use_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def moe_layer_indices(self) -> list[int]:
        """Indices of the decoder layers with an MoE FFN (routes are reported in this order)."""
        if not self.use_moe:
            return []
        if self.mlp_layer_types is not None:
            return [i for i, t in enumerate(self.mlp_layer_types) if t == "sparse"]
        return list(range(self.first_k_dense_replace, self.num_hidden_layers))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DSAConfig:
        """Build the named preset (see `PRESETS`), then apply `overrides` (e.g. vocab_size=len(tok))."""
        if name not in PRESETS:
            raise KeyError(f"unknown DSA preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# The one preset table. `tiny` is the constructor defaults; the others list what differs.
PRESETS: dict[str, dict[str, Any]] = {
    # ~1.3 M params at vocab 512 (~2.2 M at vocab 4096): the embedded default.
    "tiny": {},
    # tiny without MoE: every layer has the dense SwiGLU FFN.
    "tiny-dense-ffn": {"n_routed_experts": 0, "n_shared_experts": 0},
    # ~13 M params (vocab 4096): a CPU-trainable step up.
    "small": {
        "hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "q_lora_rank": 128,
        "kv_lora_rank": 128, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
        "index_n_heads": 8, "index_head_dim": 32, "index_topk": 64, "intermediate_size": 768,
        "moe_intermediate_size": 256, "n_routed_experts": 8, "num_experts_per_tok": 2,
    },
    # ~0.9 B total params at vocab 32K (GPU scale).
    "medium": {
        "hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, "q_lora_rank": 384,
        "kv_lora_rank": 256, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64,
        "index_n_heads": 16, "index_head_dim": 64, "index_topk": 512, "intermediate_size": 2816,
        "moe_intermediate_size": 512, "n_routed_experts": 32, "num_experts_per_tok": 4,
        "max_position_embeddings": 32768,
    },
    # DeepSeek-V3.2's own shape (671 B total, ~37 B active): for FLOP accounting, never instantiate.
    "deepseek-v3.2": {
        "vocab_size": 129280, "hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256,
        "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
        "routed_scaling_factor": 2.5, "max_position_embeddings": 163840,
    },
}
