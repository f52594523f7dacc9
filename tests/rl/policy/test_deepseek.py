"""rl.policy.deepseek / export: DeepSeek-V3/V3.2 checkpoints in and out, checked against transformers'
own DeepseekV32ForCausalLM / DeepseekV3ForCausalLM (the independent reference)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    DeepseekV32Config,
    DeepseekV32ForCausalLM,
)

import rl.policy  # noqa: F401  (registers dsa)
from rl.policy import DSAConfig, DSAForCausalLM
from rl.policy.convert import convert_pretrained
from rl.policy.deepseek import (
    CheckpointError,
    convert_deepseek,
    dequantize_fp8,
    dsa_config_from_deepseek,
    export_deepseek_v32,
    quantize_fp8,
)
from rl.policy.export import write_final
from rl.policy.layers import rope_cos_sin
from rl.policy.moe import limit_to_groups

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8}
SHAPE = {"vocab_size": 101, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 24,
         "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "n_shared_experts": 1,
         "n_routed_experts": 8, "kv_lora_rank": 32, "q_lora_rank": 48, "qk_rope_head_dim": 8, "v_head_dim": 16,
         "qk_nope_head_dim": 16, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 3, "first_k_dense_replace": 1,
         "routed_scaling_factor": 2.5, "initializer_range": 0.1, "max_position_embeddings": 64, "rope_parameters": YARN}
T = 24


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _v32(index_topk: int = 8, seed: int = 0, **kw) -> DeepseekV32ForCausalLM:
    """A random tiny V3.2 (grouped routing, non-zero correction bias, YaRN) built by transformers."""
    cfg = DeepseekV32Config(**{**SHAPE, **kw}, index_topk=index_topk, index_n_heads=16, index_head_dim=16)
    torch.manual_seed(seed)
    model = DeepseekV32ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.uniform_(-0.3, 0.3)
    return model


def _ids(seed: int = 1, vocab: int = 101, t: int = T) -> torch.Tensor:
    return torch.randint(0, vocab, (2, t), generator=torch.Generator().manual_seed(seed))


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


def _hf_logits_and_selection(model, ids, k: int):
    """transformers' logits and its indexer's choice per layer, in our replay format (B, T, k):
    positions <= t ascending, -1 padded (transformers also returns masked positions for t < k)."""
    sels = []
    hooks = [layer.self_attn.indexer.register_forward_hook(lambda mod, args, out: sels.append(out.long()))
             for layer in model.model.layers]
    logits = _hf_logits(model, ids)
    for h in hooks:
        h.remove()
    T = ids.shape[1]
    out = []
    for sel in sels:
        causal = sel <= torch.arange(T).view(1, T, 1)
        sel = torch.where(causal, sel, T).sort(-1).values
        out.append(torch.where(sel < T, sel, -1))
    return logits, tuple(out)


def _ours(model, ids, **kw):
    with torch.no_grad():
        return model(ids, use_cache=False, **kw).logits


@pytest.mark.parametrize("index_topk", [8, 64])  # below / above the sequence length
def test_v32_conversion_matches_transformers(tmp_path, index_topk):
    ref = _v32(index_topk)
    ref.save_pretrained(tmp_path / "v32", max_shard_size="100KB")
    assert len(list((tmp_path / "v32").glob("*.safetensors"))) > 2
    dsa = convert_pretrained(str(tmp_path / "v32"), tmp_path / "dsa")
    assert isinstance(dsa, DSAForCausalLM) and dsa.config.n_group == 4 and dsa.config.rope_yarn["factor"] == 4.0
    ids = _ids()
    expected = _hf_logits(ref, ids)
    assert (_ours(dsa, ids) - expected).abs().max() < 1e-4
    dense = _ours(dsa, ids, attention_mode="dense")
    if index_topk < T:  # sparse attention really drops keys
        assert (dense - expected).abs().max() > 1e-3
    # the saved dsa directory reloads with AutoModelForCausalLM, and one decode step matches too
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "dsa")
    out = again(ids[:, :-1], use_cache=True)
    step = again(ids[:, -1:], cache=out.cache, use_cache=True).logits[:, -1]
    assert (step - expected[:, -1]).abs().max() < 1e-4


def test_keep_routing_replays_under_group_limited_routing(tmp_path):
    ref = _v32(8)
    ref.save_pretrained(tmp_path / "v32")
    dsa = convert_pretrained(str(tmp_path / "v32"), tmp_path / "dsa")
    ids = _ids(2)
    with torch.no_grad():
        out = dsa(ids, use_cache=False, output_expert_routes=True, output_topk_indices=True)
        replay = dsa(ids, use_cache=False, expert_routes=out.expert_routes, topk_indices=out.topk_indices)
    assert torch.equal(out.logits, replay.logits)
    for routes in out.expert_routes:  # every token's experts lie in at most topk_group = 2 of the 4 groups
        groups = routes // 2  # 8 experts, 4 groups of 2
        assert max(len(set(row.tolist())) for row in groups.view(-1, 3)) <= 2
    # forcing other routes changes the result (the replay is really used)
    other = tuple((r + 1) % 8 for r in out.expert_routes)
    with torch.no_grad():
        changed = dsa(ids, use_cache=False, expert_routes=other).logits
    assert (changed - out.logits).abs().max() > 1e-4


def test_limit_to_groups_hand_computed():
    # 6 experts in 3 groups of 2: group sums 0.9+0.1=1.0, 0.5+0.4=0.9, 0.3+0.2=0.5 -> keep groups 0 and 1
    choice = torch.tensor([[0.9, 0.1, 0.5, 0.4, 0.3, 0.2]])
    got = limit_to_groups(choice, 3, 2)
    assert torch.equal(got, torch.tensor([[0.9, 0.1, 0.5, 0.4, float("-inf"), float("-inf")]]))


def test_yarn_tables_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = DeepseekV32Config(**SHAPE)
    inv_freq, attn = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    pos = torch.arange(40).view(1, 40)
    cos, sin = rope_cos_sin(pos, 8, 10000.0, {k: v for k, v in YARN.items() if k not in ("rope_type", "rope_theta")})
    ang = pos[..., None].float() * inv_freq
    assert torch.allclose(cos, ang.cos() * attn, atol=1e-5) and torch.allclose(sin, ang.sin() * attn, atol=1e-5)


def test_v3_conversion_dense_mode_matches_transformers(tmp_path):
    shape = {k: v for k, v in SHAPE.items() if k != "rope_parameters"}
    cfg = DeepseekV3Config(**shape, rope_parameters={**YARN, "mscale_all_dim": 1.0})
    torch.manual_seed(0)
    ref = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        ref.model.layers[2].mlp.gate.e_score_correction_bias.uniform_(-0.3, 0.3)
    ref.save_pretrained(tmp_path / "v3", max_shard_size="100KB")
    dsa = convert_pretrained(str(tmp_path / "v3"), tmp_path / "dsa", index_topk=8, index_n_heads=4)
    assert dsa.config.index_n_heads == 4 and dsa.config.index_head_dim == 16  # 2 * qk_rope_head_dim
    ids = _ids(3)
    assert (_ours(dsa, ids, attention_mode="dense") - _hf_logits(ref, ids)).abs().max() < 1e-4
    assert torch.isfinite(_ours(dsa, ids)).all()  # sparse mode runs with the fresh indexers


def test_export_round_trip_loads_as_deepseek_v32(tmp_path):
    ref = _v32(8)
    ref.save_pretrained(tmp_path / "v32", max_shard_size="100KB")
    dsa = convert_pretrained(str(tmp_path / "v32"), tmp_path / "dsa")
    export_deepseek_v32(tmp_path / "dsa", tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(back).__name__ == "DeepseekV32ForCausalLM"
    ids = _ids(4)
    ours = _ours(dsa, ids)
    assert (_hf_logits(back, ids) - ours).abs().max() < 1e-4
    assert (_hf_logits(ref, ids) - ours).abs().max() < 1e-4
    # the exported tensors are the original ones, bit for bit (names, RoPE row order, expert layout)
    orig = {k: v for k, v in ref.state_dict().items()}
    for k, v in back.state_dict().items():
        assert torch.equal(v, orig[k]), k


@pytest.mark.parametrize("preset", ["tiny", "tiny-dense-ffn"])
def test_tiny_preset_random_init_exports_exactly(tmp_path, preset):
    from rl.policy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = DSAConfig.from_preset(preset, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model = DSAForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.is_moe:
                layer.ffn.e_score_correction_bias.uniform_(-0.2, 0.2)
    model.save_pretrained(tmp_path / "dsa")
    tok.save_pretrained(tmp_path / "dsa")
    export_deepseek_v32(tmp_path / "dsa", tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(back).__name__ == "DeepseekV32ForCausalLM"
    short = _ids(5, vocab=len(tok), t=30)  # every key fits in index_topk = 32
    assert (_hf_logits(back, short) - _ours(model, short)).abs().max() < 1e-4
    # Sparse (48 > 32 keys): the tiny preset's 4 indexer heads give exact score ties (ReLU zeros on all
    # heads, ~1/16 of keys at random init) and transformers' topk breaks them arbitrarily, ours toward
    # the lower position; with transformers' own selection replayed the logits are equal.
    ids = _ids(5, vocab=len(tok), t=48)
    hf, hf_sel = _hf_logits_and_selection(back, ids, cfg.index_topk)
    assert (hf - _ours(model, ids, topk_indices=hf_sel)).abs().max() < 1e-4
    with torch.no_grad():
        own = model(ids, use_cache=False, output_topk_indices=True).topk_indices
    differ = sum(int((a != b).any(-1).sum()) for a, b in zip(own, hf_sel, strict=True))
    assert differ < 0.05 * len(own) * ids.numel()  # a few tied rows, not a different indexer
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert again.chat_template == tok.chat_template and len(again) == len(tok)


def test_write_final_in_deepseek_v32_format(tmp_path):
    torch.manual_seed(0)
    model = DSAForCausalLM(DSAConfig.from_preset("tiny", vocab_size=64))
    out = write_final(lambda d: model.save_pretrained(d), tmp_path / "final", "deepseek_v32")
    assert json.loads((out / "config.json").read_text())["model_type"] == "deepseek_v32"
    assert (tmp_path / "final_dsa" / "config.json").exists()
    assert write_final(lambda d: model.save_pretrained(d), tmp_path / "plain", "dsa") == tmp_path / "plain"


# ---- FP8 and streaming --------------------------------------------------------------------------
def test_dequantize_fp8_hand_computed():
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, -1.0, 0.5], [2.0, 2.0, 2.0]]).to(torch.float8_e4m3fn)
    s = torch.tensor([[2.0, 10.0], [0.5, 1.0]])  # 2x2 blocks over a 3x3 weight (partial edge blocks)
    want = torch.tensor([[2.0, 4.0, 30.0], [8.0, -2.0, 5.0], [1.0, 1.0, 2.0]])
    assert torch.equal(dequantize_fp8(w, s, (2, 2)), want)
    with pytest.raises(CheckpointError, match="FP8 scale shape"):
        dequantize_fp8(w, s[:1], (2, 2))


def _fp8_checkpoint(ref, directory: Path, block: int = 16, shard: str = "100KB") -> dict[str, torch.Tensor]:
    """Save `ref` with every 2-D projection weight in FP8 + weight_scale_inv (as official V3.2 does:
    not the embeddings, LM head, norms or router); returns the dequantized state the converter must see."""
    ref.save_pretrained(directory, max_shard_size=shard)
    index = directory / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    skip = ("embed_tokens", "lm_head", "norm", "mlp.gate.weight", "weights_proj")
    seen = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        out = {}
        for k, v in tensors.items():
            if v.dim() == 2 and not any(x in k for x in skip):
                q, s = quantize_fp8(v, (block, block))
                out[k], out[k + "_scale_inv"] = q, s
                data["weight_map"][k + "_scale_inv"] = file.name
                seen[k] = dequantize_fp8(q, s, (block, block))
            else:
                out[k] = v
        save_file(out, file, metadata={"format": "pt"})
    index.write_text(json.dumps(data))
    cfg = json.loads((directory / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [block, block],
                                  "activation_scheme": "dynamic"}
    (directory / "config.json").write_text(json.dumps(cfg))
    return seen


def test_fp8_multishard_checkpoint_dequantizes_exactly(tmp_path):
    ref = _v32(8)
    seen = _fp8_checkpoint(ref, tmp_path / "fp8")
    assert len(list((tmp_path / "fp8").glob("*.safetensors"))) > 2
    dsa = convert_pretrained(str(tmp_path / "fp8"), tmp_path / "dsa")
    ref.load_state_dict({**ref.state_dict(), **_fused(seen, ref)})  # the reference with the FP8-rounded weights
    ids = _ids(6)
    assert (_ours(dsa, ids) - _hf_logits(ref, ids)).abs().max() < 1e-4


def _fused(seen: dict[str, torch.Tensor], ref) -> dict[str, torch.Tensor]:
    """Per-expert checkpoint names -> transformers' in-memory fused expert tensors."""
    state = ref.state_dict()
    out = {k: v for k, v in seen.items() if k in state}
    for key in state:
        if key.endswith("mlp.experts.gate_up_proj"):
            pre = key[: -len("gate_up_proj")]
            n = state[key].shape[0]
            out[key] = torch.stack([torch.cat([seen[f"{pre}{e}.gate_proj.weight"], seen[f"{pre}{e}.up_proj.weight"]])
                                    for e in range(n)])
            out[pre + "down_proj"] = torch.stack([seen[f"{pre}{e}.down_proj.weight"] for e in range(n)])
    return out


PEAK_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from rl.policy.deepseek import convert_deepseek, expected_shapes, read_config, dsa_config_from_deepseek
    expected_shapes(dsa_config_from_deepseek(read_config(sys.argv[1])))  # imports and one-off set-up first
    def status():  # (anonymous, resident = anonymous + memory-mapped file pages) in bytes
        f = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(("RssAnon", "VmRSS"))}
        return f["RssAnon"], f["VmRSS"]
    base = status(); peak = list(base); done = [False]
    def watch():
        while not done[0]:
            now = status(); peak[0], peak[1] = max(peak[0], now[0]), max(peak[1], now[1]); time.sleep(0.002)
    th = threading.Thread(target=watch); th.start()
    convert_deepseek(sys.argv[1], sys.argv[2])
    done[0] = True; th.join()
    print(peak[0] - base[0], peak[1] - base[1])
""")


@pytest.mark.parametrize("fp8", [False, True])
def test_streaming_conversion_peak_memory_is_about_one_shard(tmp_path, fp8):
    big = {**SHAPE, "vocab_size": 4096, "hidden_size": 256, "moe_intermediate_size": 256, "intermediate_size": 512,
           "num_hidden_layers": 4, "n_routed_experts": 8, "q_lora_rank": 64, "kv_lora_rank": 64}
    cfg = DeepseekV32Config(**big, index_topk=8, index_n_heads=4, index_head_dim=16)
    torch.manual_seed(0)
    model = DeepseekV32ForCausalLM(cfg)
    if fp8:  # official layout: projections in FP8 with 128 x 128 block scales
        _fp8_checkpoint(model, tmp_path / "src", block=128, shard="1MB")
    else:
        model.save_pretrained(tmp_path / "src", max_shard_size="4MB")
    shards = sorted((tmp_path / "src").glob("*.safetensors"))
    assert len(shards) >= 7
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "src"), str(tmp_path / "dst")],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[3])
    anon, rss = (int(x) for x in out.stdout.strip().splitlines()[-1].split())
    written = sorted((tmp_path / "dst").glob("*.safetensors"))
    total, largest = sum(s.stat().st_size for s in written), max(s.stat().st_size for s in written)
    mib = 2**20
    print(f"{'FP8' if fp8 else 'fp32'} source: {len(shards)} shards {sum(s.stat().st_size for s in shards) / mib:.1f} "
          f"MiB -> fp32 {total / mib:.1f} MiB (largest output shard {largest / mib:.1f} MiB); peak memory of the "
          f"conversion: anonymous +{anon / mib:.1f} MiB, resident (with mapped file pages) +{rss / mib:.1f} MiB")
    # About one output shard: the tensors being converted (FP8: the e4m3 weight, its expanded scales and
    # the result) plus a few MiB of allocator slack, far below the model (total).
    # Resident memory adds the mapped pages of the shards being read (page cache, dropped when a shard
    # is closed): 2.5-2.9 output shards measured, so it is bounded against the model, not a shard.
    assert anon < 2 * largest and anon < 0.3 * total and rss < 0.5 * total, (anon, rss, largest, total)


# ---- clear errors -------------------------------------------------------------------------------
def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_error_unsupported_model_type():
    with pytest.raises(CheckpointError) as err:
        dsa_config_from_deepseek({"model_type": "mixtral"})
    assert "mixtral" in _one_line(err) and "deepseek_v32" in _one_line(err)


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "mx").mkdir()
    (tmp_path / "mx" / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    root = Path(__file__).parents[3]
    for module, src in (("rl.policy.convert", tmp_path / "mx"), ("rl.policy.export", tmp_path / "mx")):
        r = subprocess.run([sys.executable, "-m", module, str(src), str(tmp_path / "out")], capture_output=True,
                           text=True, cwd=root, check=False)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "mixtral" in last, last


def test_error_missing_shard(tmp_path):
    _v32().save_pretrained(tmp_path / "v32", max_shard_size="100KB")
    victim = sorted((tmp_path / "v32").glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError) as err:
        convert_deepseek(tmp_path / "v32", tmp_path / "dsa")
    assert victim.name in _one_line(err) and "missing" in _one_line(err)


def test_error_shape_does_not_match_config(tmp_path):
    _v32().save_pretrained(tmp_path / "v32")
    cfg = json.loads((tmp_path / "v32" / "config.json").read_text())
    cfg["kv_lora_rank"] = 40
    (tmp_path / "v32" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        convert_deepseek(tmp_path / "v32", tmp_path / "dsa")
    assert "shape" in _one_line(err) and "config" in _one_line(err)


def test_error_fp8_without_scales(tmp_path):
    _fp8_checkpoint(_v32(), tmp_path / "fp8")
    for shard in sorted((tmp_path / "fp8").glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            kept = {k: f.get_tensor(k) for k in f.keys() if not k.endswith("_scale_inv")}  # noqa: SIM118
        save_file(kept, shard, metadata={"format": "pt"})
    index = tmp_path / "fp8" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if not k.endswith("_scale_inv")}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as err:
        convert_deepseek(tmp_path / "fp8", tmp_path / "dsa")
    assert "FP8" in _one_line(err) and "weight_scale_inv" in _one_line(err)


def test_error_export_of_a_non_mla_policy(tmp_path):
    cfg = DSAConfig.from_preset("tiny", vocab_size=64, moe_gate="softmax")
    DSAForCausalLM(cfg).save_pretrained(tmp_path / "dsa")
    with pytest.raises(CheckpointError) as err:
        export_deepseek_v32(tmp_path / "dsa", tmp_path / "out")
    assert "sigmoid" in _one_line(err)
