"""rl.policy.convert: a Llama/Qwen2 checkpoint as a DSA policy (exact in dense mode, DSA when sparse)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rl.policy.convert import convert_model, convert_pretrained
from rl.policy.flops import gqa_sequence_forward_macs as sequence_forward_macs
from rl.policy.indexer_loss import indexer_kl
from rl.policy.llama import DSALlamaConfig, DSALlamaForCausalLM

SHAPE = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "initializer_range": 0.1}
INDEXER = {"index_topk": 6, "index_n_heads": 2, "index_head_dim": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _source(kind: str = "llama", **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**SHAPE, **kw)).eval()
    return LlamaForCausalLM(LlamaConfig(**SHAPE, **kw)).eval()


@pytest.mark.parametrize(("kind", "kw"), [("llama", {}), ("qwen2", {}),
                                          ("llama", {"tie_word_embeddings": True, "attention_bias": True})])
def test_saved_conversion_loads_with_auto_and_is_exact_in_dense_mode(tmp_path, kind, kw):
    src = _source(kind, **kw)
    src.save_pretrained(tmp_path / "src")
    convert_pretrained(str(tmp_path / "src"), tmp_path / "dsa", **INDEXER)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dsa").eval()
    assert isinstance(model, DSALlamaForCausalLM)
    assert model.config.source_model_type == kind
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = src(ids).logits
        dense = model(ids, attention_mode="dense", use_cache=False).logits
    assert (dense - ref).abs().max() < 1e-5
    # the indexer is new, everything else is the source's
    assert all(".indexer." in k for k in set(model.state_dict()) - set(src.state_dict()))


def test_left_padding_gives_the_unpadded_result():
    model = convert_model(_source(), **INDEXER)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 12, dtype=torch.long)], 1)
    with torch.no_grad():
        for mode in ("dense", "sparse"):
            a = model(ids, attention_mode=mode, use_cache=False).logits
            b = model(padded, attention_mask=mask, attention_mode=mode, use_cache=False).logits[:, 3:]
            assert (a - b).abs().max() < 1e-5


def test_sparse_equals_dense_when_every_key_fits_and_differs_otherwise():
    model = convert_model(_source(), **INDEXER)
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(3))  # T = k = 6
    longer = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (model(ids, attention_mode="sparse").logits - model(ids, attention_mode="dense").logits).abs().max() < 1e-6
        d = model(longer, attention_mode="dense", use_cache=False).logits
        s = model(longer, attention_mode="sparse", use_cache=False).logits
    assert (d[:, :6] - s[:, :6]).abs().max() < 1e-5  # queries t < k see all their keys
    assert (d[:, 6:] - s[:, 6:]).abs().max() > 1e-3


def _logp_sum(model, ids: torch.Tensor, **kw) -> torch.Tensor:
    """Sum of the log-probabilities of ``ids``' next tokens (a policy-gradient-like scalar)."""
    logits = model(ids, use_cache=False, **kw).logits[:, :-1]
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).sum()


def test_gradients_equal_the_source_in_dense_mode_and_finite_differences_in_sparse_mode():
    """RL trains the converted model: in dense mode every weight's gradient is the source Llama's
    (GQA, tied embeddings); in sparse mode, with the selection held (perturbing only the last layer's
    attention and MLP, downstream of its indexer's input), autograd agrees with central differences."""
    src = _source(tie_word_embeddings=True)
    model = convert_model(_source(tie_word_embeddings=True), **INDEXER)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(7))
    _logp_sum(src, ids).backward()
    _logp_sum(model, ids, attention_mode="dense").backward()
    ref = {n: p.grad for n, p in src.named_parameters()}
    for name, p in model.named_parameters():
        if ".indexer." not in name:
            assert (p.grad - ref[name]).norm() <= 1e-5 * ref[name].norm(), name
    model.zero_grad()
    last = [p for n, p in model.named_parameters()
            if n.startswith("model.layers.1.") and ".indexer." not in n and "input_layernorm" not in n]
    grads = torch.autograd.grad(_logp_sum(model, ids, attention_mode="sparse"), last)
    direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(last)]
    eps = 1e-3
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for p, d in zip(last, direction):
                p.add_(sign * eps * d)
            values.append(_logp_sum(model, ids, attention_mode="sparse"))
            for p, d in zip(last, direction):
                p.sub_(sign * eps * d)
    numeric = (values[0] - values[1]) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    assert abs(numeric - analytic) <= 1e-2 * abs(analytic)


def test_topk_output_and_replay():
    model = convert_model(_source(), **INDEXER)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(ids, attention_mode="sparse", use_cache=False, output_topk_indices=True)
        sel = out.topk_indices
        assert len(sel) == 2 and sel[0].shape == (2, 16, 6)
        row = sel[0][0, 2]  # query 2 sees 3 keys: [0, 1, 2, -1, -1, -1]
        assert row.tolist() == [0, 1, 2, -1, -1, -1]
        assert (sel[1][:, 10] <= 10).all() and (sel[1][:, 10] >= 0).all()
        # replaying a different selection changes the result; replaying its own reproduces it
        again = model(ids, attention_mode="sparse", use_cache=False, topk_indices=sel).logits
        assert (again - out.logits).abs().max() < 1e-6
        other = tuple(s.flip(0) for s in sel)
        assert (model(ids, attention_mode="sparse", use_cache=False, topk_indices=other).logits
                - out.logits).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs attention_mode='sparse'"):
        model(ids, attention_mode="dense", use_cache=False, topk_indices=sel)


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_cached_decode_matches_the_full_forward(mode):
    model = convert_model(_source(), **INDEXER)
    ids = torch.randint(0, 97, (2, 14), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(ids, attention_mode=mode, use_cache=False).logits
        cache = model.new_cache(2, 4)  # grows on demand
        steps = [model(ids[:, :5], attention_mode=mode, cache=cache).logits]
        for t in range(5, 14):
            steps.append(model(ids[:, t:t + 1], attention_mode=mode, cache=cache).logits)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5
    assert cache.latents[0].shape[-1] == 2 * 2 * 16  # [k; v]: 2 kv heads x head_dim 16


def test_attention_maps_and_dense_indexer_loss_match_the_source_attention():
    """Hand check: target = HF eager attention summed over heads and L1-normalised; the dense
    warm-up loss is the mean over layers and tokens of KL(target || softmax(index scores))."""
    src = _source()
    src.config._attn_implementation = "eager"
    model = convert_model(src, **INDEXER)
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        att = src(ids, output_attentions=True).attentions  # per layer (B, H, T, S)
        out = model(ids, attention_mode="dense", use_cache=False, output_attention_maps=True,
                    output_indexer_loss=True)
    kls = []
    for layer, (target, scores, allowed) in enumerate(out.attention_maps):
        p = att[layer].sum(1)
        p = p / p.sum(-1, keepdim=True)
        assert (p - target).abs().max() < 1e-6
        assert torch.equal(allowed[0], torch.ones(10, 10).tril().bool())
        kls.append(indexer_kl(scores, p, allowed).mean())
    assert abs(out.indexer_loss.item() - torch.stack(kls).mean().item()) < 1e-6


def test_freeze_all_but_indexer_and_indexer_input_detached():
    model = convert_model(_source(), **INDEXER)
    params = model.freeze_all_but_indexer()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".self_attn.indexer." in n for n in names)
    assert len(params) == len(names) == 2 * 5  # wq, wk, k_norm.{weight,bias}, weights_proj per layer
    for p in model.parameters():
        p.requires_grad_(True)
    ids = torch.randint(0, 97, (1, 12))
    out = model(ids, attention_mode="sparse", use_cache=False, output_indexer_loss=True)
    out.indexer_loss.backward()  # reaches only the indexers
    assert all((p.grad is None or p.grad.abs().max() == 0) == (".indexer." not in n)
               for n, p in model.named_parameters() if n != "model.embed_tokens.weight")


def test_unsupported_sources_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="cannot be converted"):
        convert_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)))
    with pytest.raises(ValueError, match="sliding_window"):
        convert_model(_source("qwen2", use_sliding_window=True, sliding_window=4))


def test_sequence_forward_macs_by_hand():
    c = DSALlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, index_n_heads=1, index_head_dim=4,
                       index_topk=2)
    # per token: q,o 2*8*8 = 128; k,v 2*8*4 = 64; indexer 8*4 + 8*4 + 8*1 = 72; mlp 3*8*16 = 384; head 80
    dense = sequence_forward_macs(c, 3, "dense")
    assert dense.linear == 3 * (128 + 64 + 72 + 384 + 80)
    assert dense.attention == 2 * 2 * 4 * 6 and dense.indexer == 0  # H * 2D per pair, 1+2+3 pairs
    sparse = sequence_forward_macs(c, 3, "sparse")
    assert sparse.attention == 2 * 2 * 4 * (1 + 2 + 2)
    assert sparse.indexer == 1 * (4 + 1) * 6


def test_rollout_engine_and_grpo_trainer_run_the_converted_policy(tmp_path):
    """What `+experiment=math model.path=CONVERTED` needs from the policy: the rollout engine samples
    with a DSACache and records selections; the GRPO trainer replays them (keep indexing), and its
    recomputed log-probs equal the sampler's."""
    from rl.config import AlgorithmConfig, DeepSpeedConfig
    from rl.policy.tokenizer import load_tokenizer
    from rl.trainer import Trainer
    from rollout.engine import EngineConfig, RolloutEngine
    from rollout.sampling import SamplingParams

    tok = load_tokenizer()
    torch.manual_seed(0)
    src = LlamaForCausalLM(LlamaConfig(**{**SHAPE, "vocab_size": len(tok)}, eos_token_id=tok.eos_token_id)).eval()
    src.save_pretrained(tmp_path / "src")
    convert_pretrained(str(tmp_path / "src"), tmp_path / "dsa", **INDEXER)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dsa").eval()
    engine = RolloutEngine(model, tok, EngineConfig(record_topk=True))
    prompts = [list(range(10, 22)), list(range(30, 38))]
    trajs = engine.generate(prompts * 2, SamplingParams(max_new_tokens=8), seed=0)
    assert all(t.topk_indices is not None and t.expert_routes is None for t in trajs)
    algo = AlgorithmConfig(keep_indexing=True, mini_batch_size=4, micro_batch_size=4, lr=1e-4, warmup_steps=0)
    trainer = Trainer(lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "dsa"), algo, DeepSpeedConfig(),
                      pad_id=tok.pad_token_id)
    batch = trainer.collate(trajs, [1.0, -1.0, 0.5, -0.5])
    lp = trainer.log_probs(batch)
    assert ((lp - batch.old_logprobs).abs() * batch.loss_mask).max() < 1e-4
    metrics = trainer.train_step(trajs, [1.0, -1.0, 0.5, -0.5])
    assert metrics["num_updates"] == 1 and torch.isfinite(torch.tensor(metrics["loss"]))


def test_llama3_rope_scaling_is_kept_and_generate_matches_the_source(tmp_path):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 500000.0}
    src = _source(rope_parameters=rope, max_position_embeddings=128)
    src.save_pretrained(tmp_path / "src")
    convert_pretrained(str(tmp_path / "src"), tmp_path / "dsa", **INDEXER)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dsa").eval()
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert (model(ids, attention_mode="dense", use_cache=False).logits - src(ids).logits).abs().max() < 1e-5
        mask = torch.ones_like(ids[:, :10])
        ours = model.generate(ids[:, :10], attention_mask=mask, max_new_tokens=6, do_sample=False,
                              attention_mode="dense", pad_token_id=0)
        theirs = src.generate(ids[:, :10], attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_policy_dispatch_on_model_type():
    from rl.policy import DSAConfig, DSAForCausalLM, flops
    from rl.policy.factory import build_policy, policy_config, policy_sequence_macs

    native = DSAConfig.from_preset("tiny", vocab_size=64)
    converted = convert_model(_source(), **INDEXER).config
    assert isinstance(build_policy(native.to_dict()), DSAForCausalLM)
    assert isinstance(build_policy(converted.to_dict()), DSALlamaForCausalLM)
    assert policy_config(converted.to_dict()).index_topk == 6
    assert policy_sequence_macs(native, 40) == flops.sequence_forward_macs(native, 40)
    assert policy_sequence_macs(converted, 40) == sequence_forward_macs(converted, 40)


def test_command_line_converts(tmp_path, capsys):
    from rl.policy.convert import main

    _source("qwen2").save_pretrained(tmp_path / "src")
    main([str(tmp_path / "src"), str(tmp_path / "dst"), "--index-topk", "4", "--index-n-heads", "2",
          "--index-head-dim", "8"])
    assert "converted" in capsys.readouterr().out
    cfg = AutoModelForCausalLM.from_pretrained(tmp_path / "dst").config
    assert (cfg.model_type, cfg.index_topk, cfg.index_n_heads, cfg.index_head_dim) == ("dsa_llama", 4, 2, 8)
    assert (cfg.qkv_bias, cfg.o_bias) == (True, False)


def test_cached_convert_converts_a_llama_once_and_passes_dsa_dirs_through(tmp_path):
    from rl.policy.convert import cached_convert

    _source("llama").save_pretrained(tmp_path / "src")
    first = cached_convert(str(tmp_path / "src"), tmp_path / "cache", index_topk=4)
    assert AutoModelForCausalLM.from_pretrained(first).config.model_type == "dsa_llama"
    stamp = (first / "config.json").stat().st_mtime_ns
    again = cached_convert(str(tmp_path / "src"), tmp_path / "cache", index_topk=4)
    assert again == first and (again / "config.json").stat().st_mtime_ns == stamp  # not converted twice
    assert cached_convert(str(first), tmp_path / "cache") == first  # already a DSA policy
    assert cached_convert(str(tmp_path / "src"), tmp_path / "cache", index_topk=6) != first  # other settings



def test_rl_train_resolves_a_llama_model_path_to_a_cached_conversion(tmp_path):
    """`model.path=` a plain Llama directory in rl.train: converted once into the data cache."""
    from rl.config import TrainConfig
    from rl.setup import _model_path

    _source("llama").save_pretrained(tmp_path / "src")
    cfg = TrainConfig()
    cfg.model.path, cfg.data.cache_dir = str(tmp_path / "src"), str(tmp_path / "cache")
    said = []
    path = _model_path(cfg, said.append)
    assert path.startswith(str(tmp_path / "cache" / "converted"))
    assert AutoModelForCausalLM.from_pretrained(path).config.model_type == "dsa_llama"
    assert said == [f"model.path: {tmp_path / 'src'} converted to a DSA policy in {path}"]
    cfg.model.path = path
    assert _model_path(cfg, said.append) == path and len(said) == 1  # a DSA directory is used as it is
