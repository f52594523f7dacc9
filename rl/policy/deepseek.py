"""DeepSeek-V3 / V3.2 checkpoints in and out of the native DSA policy (`DSAForCausalLM`), streamed.

- `convert_deepseek(src, dst)`: a `deepseek_v32` or `deepseek_v3` checkpoint directory -> a `dsa`
  directory (config.json, safetensors shards + index, tokenizer files). V3.2's indexers are kept as
  they are; a V3 checkpoint gets fresh indexers (seeded normal init, like the Llama/Qwen2 converter).
- `export_deepseek_v32(src, dst)`: a `dsa` directory (MLA-based) -> a `deepseek_v32` directory that
  transformers loads as `DeepseekV32ForCausalLM` (and that serving engines read: the official
  per-expert tensor names, `model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`).

Streaming: both walk the source shard by shard; every output shard holds the tensors of one input
shard, so peak memory is about one (output) shard. A tensor whose partner lives in another shard (an
FP8 scale, one half of a fused expert tensor) is read from that shard alone (safetensors reads one
tensor, memory-mapped). FP8 (e4m3) weights with `weight_scale_inv` block scales (official V3.2:
128 x 128 blocks) are dequantized to the output dtype: W = W_fp8 * scale_inv[i // 128, j // 128].

Layout differences handled here (exact re-layouts, no arithmetic):
- MLA RoPE: V3/V3.2 rotate interleaved pairs (2i, 2i+1) of q_rope / k_rope; the native policy rotates
  half-split pairs (i, i + d/2). Rotating x interleaved equals rotating x[perm] half-split with
  perm = [0, 2, 4, ..., 1, 3, 5, ...], so the loader permutes the RoPE output rows of q_b and kv_a
  (export applies the inverse). q . k is unchanged because both sides are permuted alike.
- Names (`_name_to_dsa`), fused experts (`mlp.experts.gate_up_proj` (E, 2I, d) / `down_proj`
  (E, d, I), as transformers holds them in memory) split per expert; the MTP layer
  (`model.layers.{num_hidden_layers}.*`) is dropped (the policy has no multi-token prediction).

Exactness notes: transformers' V3.2 uses eps 1e-6 in the q/kv latent norms and the indexer key norm
whatever `rms_norm_eps` says (the native policy uses `rms_norm_eps` everywhere): identical for every
released checkpoint (1e-6); export refuses another value. The indexer's ties break toward the lower
position here (transformers' `topk` breaks them arbitrarily).
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rl.policy.configuration import DSAConfig

SOURCE_TYPES = ("deepseek_v3", "deepseek_v32")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|chat_template.*|generation_config\.json|"
                             r".*\.tiktoken|vocab\.json|merges\.txt)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message is one line naming the problem and the fix."""


# ---- reading ------------------------------------------------------------------------------------
class ShardedCheckpoint:
    """The tensors of a safetensors checkpoint directory (`model.safetensors` or an index + shards),
    read lazily: `shards` in order, `names(shard)`, `get(name)` (any shard)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            self.shards = sorted(set(weight_map.values()))
            for shard in self.shards:
                if not (self.dir / shard).exists():
                    raise CheckpointError(f"{self.dir}: shard {shard} is listed in model.safetensors.index.json "
                                          "but missing: download it (or rebuild the index)")
            self.where = weight_map
        elif (self.dir / "model.safetensors").exists():
            self.shards = ["model.safetensors"]
            with safe_open(self.dir / "model.safetensors", "pt") as f:
                self.where = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118 (not a dict)
        else:
            raise CheckpointError(f"{self.dir}: no model.safetensors or model.safetensors.index.json; give a "
                                  "safetensors checkpoint directory")
        self._open: dict[str, Any] = {}

    def names(self, shard: str) -> list[str]:
        """Tensor names stored in `shard`, sorted."""
        return sorted(k for k, v in self.where.items() if v == shard)

    def get(self, name: str) -> torch.Tensor:
        """One tensor (read from its shard only)."""
        shard = self.where[name]
        if shard not in self._open:
            self._open[shard] = safe_open(self.dir / shard, "pt")
        return self._open[shard].get_tensor(name)

    def close(self) -> None:
        """Drop the open (memory-mapped) shards: called after each shard, so mapped pages never add up."""
        self._open.clear()


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128),
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Block-scaled FP8 -> `dtype`: weight (R, C) fp8, scale_inv (ceil(R / b0), ceil(C / b1)) fp32;
    out[i, j] = weight[i, j] * scale_inv[i // b0, j // b1]."""
    R, C = weight.shape
    b0, b1 = block
    need = (-(-R // b0), -(-C // b1))
    if tuple(scale_inv.shape) != need:
        raise CheckpointError(f"FP8 scale shape {tuple(scale_inv.shape)} does not match weight {(R, C)} in "
                              f"{b0}x{b1} blocks (expected {need}): check quantization_config.weight_block_size")
    scale = scale_inv.float().repeat_interleave(b0, 0)[:R].repeat_interleave(b1, 1)[:, :C]  # (R, C)
    return (weight.float() * scale).to(dtype)


def quantize_fp8(weight: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `dequantize_fp8` up to FP8 rounding (per-block absmax / 448): (weight fp8, scale_inv).
    For tests and tools that build FP8 checkpoints."""
    R, C = weight.shape
    b0, b1 = block
    nr, nc = -(-R // b0), -(-C // b1)
    padded = weight.float().new_zeros(nr * b0, nc * b1)
    padded[:R, :C] = weight.float()
    blocks = padded.view(nr, b0, nc, b1)
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max  # (nr, nc)
    q = (blocks / scale[:, None, :, None]).view(nr * b0, nc * b1)[:R, :C].to(torch.float8_e4m3fn)
    return q, scale


# ---- configs ------------------------------------------------------------------------------------
def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{directory}: no config.json; give a checkpoint directory")
    return json.loads(path.read_text())


def _rope(src: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, YaRN parameters or None) from `rope_parameters` (transformers 5) or `rope_scaling`."""
    params = dict(src.get("rope_parameters") or src.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", src.get("rope_theta", 10000.0)))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise CheckpointError(f"rope type {kind!r} is not supported (DeepSeek-V3/V3.2 use 'yarn' or none)")
    return theta, params


def dsa_config_from_deepseek(src: dict[str, Any], **indexer: Any) -> DSAConfig:
    """The `DSAConfig` of a deepseek_v3 / deepseek_v32 config dict. `indexer` (index_topk,
    index_n_heads, index_head_dim) overrides V3.2's own; for V3 it sizes the new indexers
    (defaults: qk_rope_head_dim * 2 head dims, num_attention_heads / 2 heads, top-2048)."""
    mt = src.get("model_type")
    if mt not in SOURCE_TYPES:
        raise CheckpointError(f"model_type {mt!r} is not a DeepSeek-V3/V3.2 checkpoint: supported {SOURCE_TYPES}")
    if src.get("q_lora_rank") is None:
        raise CheckpointError("q_lora_rank is null (a V2-Lite-style query projection): only checkpoints with a "
                              "compressed query (q_lora_rank set) map onto the DSA policy")
    for key, want in (("hidden_act", "silu"), ("scoring_func", "sigmoid"), ("attention_bias", False),
                      ("tie_word_embeddings", False)):
        if key in src and src[key] != want:
            raise CheckpointError(f"{key}={src[key]!r} is not supported (the DSA policy needs {want!r})")
    theta, yarn = _rope(src)
    n_layers = src["num_hidden_layers"]
    first_dense = src.get("first_k_dense_replace") or 0
    mlp_types = src.get("mlp_layer_types") or ["dense"] * min(first_dense, n_layers) + \
        ["sparse"] * max(0, n_layers - first_dense)
    if mt == "deepseek_v32":
        index = {k: src[k] for k in ("index_topk", "index_n_heads", "index_head_dim")}
    else:
        index = {"index_topk": 2048, "index_n_heads": max(1, src["num_attention_heads"] // 2),
                 "index_head_dim": 2 * src["qk_rope_head_dim"]}
    index.update({k: v for k, v in indexer.items() if v is not None})
    if index["index_head_dim"] < src["qk_rope_head_dim"]:
        raise CheckpointError(f"index_head_dim={index['index_head_dim']} is below qk_rope_head_dim="
                              f"{src['qk_rope_head_dim']} (the indexer's RoPE width): raise --index-head-dim")
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size", "moe_intermediate_size",
            "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "routed_scaling_factor", "n_group",
            "topk_group", "norm_topk_prob", "rms_norm_eps", "max_position_embeddings", "initializer_range",
            "bos_token_id", "eos_token_id", "pad_token_id")
    d = {k: src[k] for k in keep if k in src}
    return DSAConfig(**d, **index, rope_theta=theta, rope_yarn=yarn, mlp_layer_types=mlp_types,
                     first_k_dense_replace=first_dense, index_rope_head_dim=src["qk_rope_head_dim"],
                     moe_gate="sigmoid")


def deepseek_v32_config_from_dsa(cfg: DSAConfig, dtype: str = "float32") -> dict[str, Any]:
    """config.json (a dict) of the `deepseek_v32` export of a native DSA config; raises
    `CheckpointError` where V3.2's layout cannot express the policy."""
    if cfg.model_type != "dsa":
        raise CheckpointError(f"model_type {cfg.model_type!r} is not an MLA-based DSA policy: only 'dsa' policies "
                              "export to deepseek_v32 (a converted Llama/Qwen2 keeps its own architecture)")
    if cfg.use_moe and cfg.moe_gate != "sigmoid":
        raise CheckpointError(f"moe_gate={cfg.moe_gate!r}: DeepSeek-V3.2 routes with sigmoid gates only")
    if cfg.index_rope_dim != cfg.qk_rope_head_dim:
        raise CheckpointError(f"the indexer rotates {cfg.index_rope_dim} dims but V3.2's indexer rotates "
                              f"qk_rope_head_dim={cfg.qk_rope_head_dim}: set index_rope_head_dim (or index_head_dim) "
                              "to match before training")
    if cfg.rms_norm_eps != 1e-6:
        raise CheckpointError(f"rms_norm_eps={cfg.rms_norm_eps}: V3.2's latent and indexer norms use 1e-6")
    if cfg.tie_word_embeddings:
        raise CheckpointError("tie_word_embeddings=True cannot be exported")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_yarn:
        rope = {"rope_type": "yarn", "rope_theta": cfg.rope_theta, **cfg.rope_yarn}
    mlp_types = ["sparse" if i in cfg.moe_layer_indices else "dense" for i in range(cfg.num_hidden_layers)]
    same = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "kv_lora_rank",
            "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "n_group", "topk_group",
            "num_experts_per_tok", "norm_topk_prob", "max_position_embeddings", "initializer_range", "rms_norm_eps",
            "index_topk", "index_head_dim", "index_n_heads", "bos_token_id", "eos_token_id", "pad_token_id")
    out = {k: getattr(cfg, k) for k in same}
    out.update({
        "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
        "num_key_value_heads": cfg.num_attention_heads, "hidden_act": "silu", "attention_bias": False,
        "tie_word_embeddings": False, "rope_parameters": rope, "mlp_layer_types": mlp_types,
        "first_k_dense_replace": mlp_types.index("sparse") if "sparse" in mlp_types else cfg.num_hidden_layers,
        "head_dim": cfg.qk_rope_head_dim, "dtype": dtype, "use_cache": True,
    })
    if not cfg.use_moe:  # V3.2's config wants a valid expert count even when every layer is dense
        out.update(n_routed_experts=1, num_experts_per_tok=1, n_group=1, topk_group=1)
    return out


# ---- names and layouts --------------------------------------------------------------------------
_ATTN = {"q_a_proj": "q_a", "q_a_layernorm": "q_norm", "q_b_proj": "q_b", "kv_a_proj_with_mqa": "kv_a",
         "kv_a_layernorm": "kv_norm", "kv_b_proj": "kv_b", "o_proj": "o", "indexer.wq_b": "indexer.wq",
         "indexer.wk": "indexer.wk", "indexer.k_norm": "indexer.k_norm", "indexer.weights_proj": "indexer.weights_proj"}
_PROJ = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _name_to_dsa(name: str) -> str | None:
    """DSA name of a V3/V3.2 tensor name (per-expert layout); None for names without one."""
    if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        return name
    m = _LAYER.match(name)
    if not m:
        return None
    i, rest = m.groups()
    pre = f"model.layers.{i}."
    if rest == "input_layernorm.weight":
        return pre + "attn_norm.weight"
    if rest == "post_attention_layernorm.weight":
        return pre + "ffn_norm.weight"
    if rest.startswith("self_attn."):
        mod, _, param = rest[len("self_attn."):].rpartition(".")
        return pre + "attn." + _ATTN[mod] + "." + param if mod in _ATTN else None
    if not rest.startswith("mlp."):
        return None
    rest = rest[len("mlp."):]
    if rest == "gate.weight":
        return pre + "ffn.gate.weight"
    if rest == "gate.e_score_correction_bias":
        return pre + "ffn.e_score_correction_bias"
    parts = rest.split(".")
    if parts[0] == "experts" and len(parts) == 4 and parts[2] in _PROJ:
        return f"{pre}ffn.experts.{parts[1]}.{_PROJ[parts[2]]}.{parts[3]}"
    if parts[0] == "shared_experts" and len(parts) == 3 and parts[1] in _PROJ:
        return f"{pre}ffn.shared.{_PROJ[parts[1]]}.{parts[2]}"
    if len(parts) == 2 and parts[0] in _PROJ:
        return f"{pre}ffn.{_PROJ[parts[0]]}.{parts[1]}"
    return None


_TO_V32 = {v: k for k, v in _ATTN.items()}
_PROJ_TO_V32 = {v: k for k, v in _PROJ.items()}


def _name_to_v32(name: str, moe_layers: set[int]) -> str:
    """V3.2 name of a DSA tensor name (the inverse of `_name_to_dsa`); `ffn.gate.weight` is the router
    in the MoE layers `moe_layers` and the SwiGLU gate elsewhere."""
    if name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        return name
    m = _LAYER.match(name)
    if not m:
        raise CheckpointError(f"tensor {name!r} has no place in a deepseek_v32 checkpoint")
    i, rest = m.groups()
    pre = f"model.layers.{i}."
    if rest == "attn_norm.weight":
        return pre + "input_layernorm.weight"
    if rest == "ffn_norm.weight":
        return pre + "post_attention_layernorm.weight"
    if rest.startswith("attn."):
        mod, _, param = rest[len("attn."):].rpartition(".")
        return pre + "self_attn." + _TO_V32[mod] + "." + param
    parts = rest.split(".")
    if rest == "ffn.gate.weight" and int(i) in moe_layers:
        return pre + "mlp.gate.weight"
    if rest == "ffn.e_score_correction_bias":
        return pre + "mlp.gate.e_score_correction_bias"
    if parts[1] == "experts":
        return f"{pre}mlp.experts.{parts[2]}.{_PROJ_TO_V32[parts[3]]}.{parts[4]}"
    if parts[1] == "shared":
        return f"{pre}mlp.shared_experts.{_PROJ_TO_V32[parts[2]]}.{parts[3]}"
    return f"{pre}mlp.{_PROJ_TO_V32[parts[1]]}.{parts[2]}"


def rope_row_perm(cfg: DSAConfig, which: str) -> torch.Tensor:
    """Row order that turns V3's interleaved RoPE rows into half-split ones, for q_b ("q") or kv_a ("kv"):
    new_weight = old_weight[perm]. Only the RoPE rows move (inverse: `torch.argsort(perm)`)."""
    dr = cfg.qk_rope_head_dim
    inner = torch.cat([torch.arange(0, dr, 2), torch.arange(1, dr, 2)])  # (dr,)
    if which == "kv":
        return torch.cat([torch.arange(cfg.kv_lora_rank), cfg.kv_lora_rank + inner])
    head = cfg.qk_nope_head_dim + dr
    one = torch.cat([torch.arange(cfg.qk_nope_head_dim), cfg.qk_nope_head_dim + inner])
    return torch.cat([h * head + one for h in range(cfg.num_attention_heads)])


def expected_shapes(cfg: DSAConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of `DSAForCausalLM(cfg)` and its shape (built on the meta device)."""
    from rl.policy.modeling import DSAForCausalLM

    with torch.device("meta"):
        model = DSAForCausalLM(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _new_indexer(cfg: DSAConfig, layer: int, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fresh indexer weights of one layer (normal(0, initializer_range) projections, unit LayerNorm),
    seeded by (seed, layer) so the result does not depend on shard boundaries."""
    g = torch.Generator().manual_seed(seed * 100003 + layer)
    std, d, q, H, D = cfg.initializer_range, cfg.hidden_size, cfg.q_lora_rank, cfg.index_n_heads, cfg.index_head_dim
    pre = f"model.layers.{layer}.attn.indexer."
    return {pre + "wq.weight": (torch.randn(H * D, q, generator=g) * std).to(dtype),
            pre + "wk.weight": (torch.randn(D, d, generator=g) * std).to(dtype),
            pre + "k_norm.weight": torch.ones(D, dtype=dtype), pre + "k_norm.bias": torch.zeros(D, dtype=dtype),
            pre + "weights_proj.weight": (torch.randn(H, d, generator=g) * std).to(dtype)}


# ---- conversion ---------------------------------------------------------------------------------
def _dsa_tensors(ck: ShardedCheckpoint, shard: str, cfg: DSAConfig, interleaved: bool, block: tuple[int, int],
                 dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The DSA tensors made from the V3/V3.2 tensors stored in `shard` (FP8 dequantized, RoPE rows
    de-interleaved, fused experts split)."""
    perms = {"q_b": rope_row_perm(cfg, "q"), "kv_a": rope_row_perm(cfg, "kv")} if interleaved else {}
    for name in ck.names(shard):
        if name.endswith(("_scale_inv", ".weight_scale")):
            continue  # read with its weight
        m = _LAYER.match(name)
        if m and int(m.group(1)) >= cfg.num_hidden_layers:
            continue  # the multi-token-prediction layer
        t = ck.get(name)
        if t.dtype in FP8_DTYPES:
            scale = name + "_scale_inv"
            if scale not in ck.where:
                raise CheckpointError(f"{name} is FP8 but {scale} is missing: FP8 weights need their block scales "
                                      "(use the checkpoint's complete shards)")
            t = dequantize_fp8(t, ck.get(scale), block, dtype)
        fused = re.match(r"^(model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$", name)
        if fused:
            pre = fused.group(1) + ".ffn.experts"
            for e in range(t.shape[0]):
                if fused.group(2) == "gate_up_proj":
                    gate, up = t[e].chunk(2, dim=0)
                    yield f"{pre}.{e}.gate.weight", gate.to(dtype).contiguous()
                    yield f"{pre}.{e}.up.weight", up.to(dtype).contiguous()
                else:
                    yield f"{pre}.{e}.down.weight", t[e].to(dtype).contiguous()
            continue
        new = _name_to_dsa(name)
        if new is None:
            raise CheckpointError(f"tensor {name!r} has no place in the DSA policy (is this a DeepSeek-V3/V3.2 "
                                  "checkpoint of transformers' layout?)")
        kind = new.rsplit(".", 2)[-2]
        if kind in perms and new.endswith(".weight"):
            t = t[perms[kind]]
        keep_fp32 = new.endswith("e_score_correction_bias")
        yield new, (t.float() if keep_fp32 else t.to(dtype)).contiguous()


def _shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and TOKENIZER_FILES.match(f.name):
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


def is_deepseek_dir(src: str | Path) -> bool:
    """True for a local checkpoint directory whose config.json says deepseek_v3 / deepseek_v32."""
    cfg = Path(src) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in SOURCE_TYPES


def cached_conversion(src: str | Path, cache_root: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32,
                      **indexer: Any) -> Path:
    """`convert_deepseek` once per (source, settings) into cache_root/converted/KEY (written to a temporary
    sibling, then renamed): how `model.path=` a V3/V3.2 directory is used by rl.train / rl.indexer_train."""
    import hashlib

    src = Path(src).resolve()
    stamp = (src / "config.json").stat().st_mtime_ns
    key = hashlib.sha256(repr((str(src), stamp, seed, str(dtype), sorted(indexer.items()))).encode()).hexdigest()[:16]
    out = Path(cache_root) / "converted" / key
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    convert_deepseek(src, tmp, dtype=dtype, seed=seed, **indexer)
    tmp.rename(out)
    return out


def convert_deepseek(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float32, seed: int = 0,
                     **indexer: Any) -> DSAConfig:
    """Stream a deepseek_v3 / deepseek_v32 checkpoint directory into a `dsa` one (see module docstring).
    Returns the written config. `indexer`: index_topk / index_n_heads / index_head_dim overrides."""
    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    cfg = dsa_config_from_deepseek(raw, **indexer)
    interleaved = raw.get("rope_interleave", True)  # V3.2 always interleaves; V3 says so in its config
    block = tuple((raw.get("quantization_config") or {}).get("weight_block_size") or (128, 128))
    want = expected_shapes(cfg)
    ck = ShardedCheckpoint(src)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    n = len(ck.shards)
    new_indexers: dict[str, list[int]] = {}
    if raw["model_type"] == "deepseek_v3":
        for layer in range(cfg.num_hidden_layers):
            home = ck.where.get(f"model.layers.{layer}.self_attn.q_a_proj.weight", ck.shards[-1])
            new_indexers.setdefault(home, []).append(layer)
    for i, shard in enumerate(ck.shards):
        out: dict[str, torch.Tensor] = {}
        for name, t in _dsa_tensors(ck, shard, cfg, interleaved, block, dtype):
            if name not in want:
                raise CheckpointError(f"tensor {name!r} (from {shard}) is not in the policy built from config.json "
                                      "(expert or layer counts disagree with the config)")
            if tuple(t.shape) != want[name]:
                raise CheckpointError(f"{name} from {shard} has shape {tuple(t.shape)} but config.json implies "
                                      f"{want[name]}: the weights do not match the config")
            out[name] = t
        for layer in new_indexers.get(shard, []):  # V3: fresh indexers beside their layer's query projection
            out.update(_new_indexer(cfg, layer, seed, dtype))
        save_file(out, dst / _shard_name(i, n), metadata={"format": "pt"})
        weight_map.update({k: _shard_name(i, n) for k in out})
        del out
        ck.close()
    missing = sorted(set(want) - set(weight_map))
    if missing:
        raise CheckpointError(f"{len(missing)} weights missing from {src} (first: {missing[0]}): the checkpoint is "
                              "incomplete or its layer/expert counts disagree with config.json")
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    cfg.dtype = dtype
    cfg.save_pretrained(dst)
    _copy_tokenizer(src, dst)
    return cfg


def export_deepseek_v32(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Stream a native `dsa` policy directory into a `deepseek_v32` one (config, safetensors shards in
    the official per-expert layout with interleaved MLA RoPE rows, tokenizer and chat template files).
    Returns the written config dict."""
    src, dst = Path(src), Path(dst)
    raw = read_config(src)
    if raw.get("model_type") != "dsa":
        raise CheckpointError(f"{src}: model_type {raw.get('model_type')!r} is not an MLA-based DSA policy ('dsa'); "
                              "export takes a run's final/ or a converted DeepSeek-V3/V3.2 directory")
    cfg = DSAConfig.from_pretrained(src)
    ck = ShardedCheckpoint(src)
    first = ck.get(next(iter(ck.where)))
    out_cfg = deepseek_v32_config_from_dsa(cfg, dtype=str(first.dtype).removeprefix("torch."))
    inv = {"q_b": torch.argsort(rope_row_perm(cfg, "q")), "kv_a": torch.argsort(rope_row_perm(cfg, "kv"))}
    want = expected_shapes(cfg)
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    n = len(ck.shards)
    for i, shard in enumerate(ck.shards):
        out = {}
        for name in ck.names(shard):
            t = ck.get(name)
            if name in want and tuple(t.shape) != want[name]:
                raise CheckpointError(f"{name} in {shard} has shape {tuple(t.shape)} but config.json implies "
                                      f"{want[name]}: the weights do not match the config")
            kind = name.rsplit(".", 2)[-2]
            if kind in inv and name.endswith(".weight") and ".indexer." not in name:
                t = t[inv[kind]]
            out[_name_to_v32(name, set(cfg.moe_layer_indices))] = t.contiguous()
        save_file(out, dst / _shard_name(i, n), metadata={"format": "pt"})
        weight_map.update({k: _shard_name(i, n) for k in out})
        del out
        ck.close()
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    (dst / "config.json").write_text(json.dumps(out_cfg, indent=2))
    _copy_tokenizer(src, dst)
    return out_cfg
