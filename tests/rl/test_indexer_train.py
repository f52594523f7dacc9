"""rl.indexer_train: packing, the recall / LM-gap report by hand, and the two stages on a tiny
Llama trained briefly (so its attention is not uniform)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rl.config import TrainConfig
from rl.indexer_train import load_texts, measure, pack, run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _CharTok:
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - 96 for c in text]}


def test_pack_by_hand():
    out = pack(["ab", "c"], _CharTok(), seq_len=3, num=3)  # stream a b EOS c EOS, cycled
    assert out.tolist() == [[1, 2, 0], [3, 0, 1], [2, 0, 3]]


def test_load_texts_from_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one doc\nstill one\n\nsecond\n\n\n")
    assert load_texts(str(tmp_path / "a.txt"), "text", "train", 0) == ["one doc\nstill one", "second"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text(json.dumps({"body": "hello"}) + "\n" + json.dumps({"body": "world"}) + "\n")
    assert load_texts(str(tmp_path / "d"), "body", "train", 0) == ["hello", "world"]
    with pytest.raises(ValueError, match="text_column"):
        load_texts(str(tmp_path / "d"), "text", "train", 0)
    assert len(load_texts("synth", "text", "train", 0)) > 100


def test_math_chat_text_is_rendered_by_the_models_chat_template():
    from rl.policy.tokenizer import load_tokenizer

    docs = load_texts("math_chat", "text", "train", 0, load_tokenizer())
    assert len(docs) == 2000 and len(set(docs)) > 1900
    # seed 0's first problem, in the embedded tokenizer's template (a pretrained model uses its own)
    assert docs[0] == ("<|bos|><|user|>Gus has 21 apples, buys 9 boxes with 8 apples each, then gives away 39. "
                       "How many apples are left?<|end|><|assistant|>9 * 8 = 72. 21 + 72 = 93. 93 - 39 = 54. "
                       "The answer is \\boxed{54}.<|end|>")
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        load_texts("math_chat", "text", "train", 0, SimpleNamespace(chat_template=None))


class _Stub(nn.Module):
    """Returns fixed maps: k = 1, one sequence of 3 tokens."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(index_topk=1)

    def forward(self, ids, labels=None, attention_mode="dense", use_cache=False, output_attention_maps=False):
        allowed = torch.ones(3, 3).tril().bool()[None]
        target = torch.tensor([[[1.0, 0, 0], [0.2, 0.8, 0], [0.5, 0.3, 0.2]]])
        scores = torch.tensor([[[0.0, 0, 0], [5.0, 1, 0], [3.0, 2, 1]]])
        loss = torch.tensor(1.0 if attention_mode == "dense" else 1.5)
        return SimpleNamespace(lm_loss=loss, attention_maps=((target, scores, allowed),) if output_attention_maps else None)


def test_measure_by_hand():
    r = measure(_Stub(), torch.zeros(1, 3, dtype=torch.long), batch_size=1)
    # queries 1 and 2 have > k allowed keys; query 1: true {1}, indexer {0}; query 2: both {0}
    assert r["recall"] == [pytest.approx(0.5)]
    assert r["mass"] == [pytest.approx((0.2 + 0.5) / 2)]
    assert r["mass_best"] == [pytest.approx((0.8 + 0.5) / 2)]
    assert r["random"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert (r["lm_dense"], r["lm_sparse"], r["lm_gap"]) == pytest.approx((1.0, 1.5, 0.5))


# ---- the tiny Llama, trained briefly ------------------------------------------------------------
def _pretrained_llama(path: Path, steps: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rl.policy.tokenizer import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    data = pack(load_texts("synth", "text", "train", 1), tok, 48, 256)  # another seed than the stages'
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = data[torch.randint(0, 256, (8,), generator=gen)]
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    tok.save_pretrained(path)


def _stage_config(path: Path, stage: str, steps: int) -> TrainConfig:
    c = TrainConfig(device="cpu")
    c.model.path, c.model.index_topk = str(path), 8
    c.indexer.stage, c.indexer.model_lr = stage, 1e-4
    c.indexer.seq_len, c.indexer.num_sequences, c.indexer.eval_sequences, c.indexer.batch_size = 48, 128, 8, 8
    c.indexer.index_n_heads, c.indexer.index_head_dim = 2, 16
    c.budget.max_steps, c.budget.max_seconds = steps, None
    return c


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("llama")
    _pretrained_llama(path, steps=150)
    torch.set_num_threads(n)
    return path


def test_trained_llama_converts_exactly(llama_dir):
    from transformers import AutoModelForCausalLM

    from rl.policy.convert import convert_model

    src = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    model = convert_model(src, index_topk=8, index_n_heads=2, index_head_dim=16)
    ids = torch.randint(0, src.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids, attention_mode="dense", use_cache=False).logits - src(ids).logits).abs().max() < 1e-5


def test_a_gguf_source_is_converted_through_the_cache(llama_dir, tmp_path, monkeypatch):
    """`model.path=gguf:...`: converted once by `cached_convert` (as rl.train does) with the indexer
    settings of the config, then loaded as the converted dsa_llama model with its tokenizer."""
    from rl.indexer_train import load_policy
    from rl.policy.convert import convert_pretrained

    calls = []

    def fake_cached_convert(src, cache_root, seed=0, **indexer):
        calls.append((src, str(cache_root), seed, indexer))
        dst = tmp_path / "converted"
        if not dst.exists():
            convert_pretrained(str(llama_dir), dst, seed=seed, **indexer)
        return dst

    monkeypatch.setattr("rl.policy.convert.cached_convert", fake_cached_convert)
    c = _stage_config("gguf:some.gguf", "warmup", 1)
    c.data.cache_dir = str(tmp_path / "cache")
    model, tok = load_policy(c)
    assert calls == [("gguf:some.gguf", str(tmp_path / "cache"), 0,
                      {"index_topk": 8, "index_n_heads": 2, "index_head_dim": 16})]
    assert type(model).__name__ == "DSALlamaForCausalLM" and model.config.index_topk == 8
    assert tok.eos_token_id is not None


def test_warmup_then_sparse(llama_dir, tmp_path):
    """Warm-up lifts top-k recall well above random; the sparse stage shrinks the LM gap further.
    (Recall and gap are measured on held-out packed text; numbers of a longer run are in the report.)"""
    warm = run(_stage_config(llama_dir, "warmup", 40), str(tmp_path / "warm"), log=lambda s: None)
    b, a = warm["before"], warm["after"]
    assert all(x > y + 0.1 for x, y in zip(a["recall"], b["recall"], strict=True))
    assert min(a["recall"]) > a["random"] + 0.1
    assert a["lm_dense"] == pytest.approx(b["lm_dense"], abs=1e-6)  # only the indexer trained
    assert a["lm_gap"] < 0.6 * b["lm_gap"]
    assert warm["budget"]["budget/steps"] == 40 and warm["budget"]["budget/indexer_flops"] == 0  # dense mode
    saved = json.loads((tmp_path / "warm" / "indexer_report.json").read_text())
    assert saved["after"]["recall"] == a["recall"]

    sparse = run(_stage_config(tmp_path / "warm" / "model", "sparse", 45), str(tmp_path / "sparse"),
                 log=lambda s: None)
    s = sparse["after"]
    assert s["lm_gap"] < 0.7 * a["lm_gap"]
    assert s["lm_gap"] < 0.3 * b["lm_gap"]  # most of the conversion's sparse-vs-dense gap is closed
    assert sparse["budget"]["budget/indexer_flops"] > 0


@pytest.mark.slow
def test_command_line_two_stages(llama_dir, tmp_path):
    """The two commands of the README, through Hydra, on the tiny Llama."""
    from rl.distributed import RANK_VARS

    # a fresh process group: drop the rank variables an in-process stage left in this process
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS} | {"HF_HUB_OFFLINE": "1"}
    common = ["model.index_topk=8", "indexer.seq_len=48", "indexer.num_sequences=64", "indexer.eval_sequences=4",
              "indexer.index_n_heads=2", "indexer.index_head_dim=16", "budget.max_steps=3", "device=cpu"]
    for exp, path, out in (("dsa_warmup", llama_dir, tmp_path / "w"), ("dsa_sparse", tmp_path / "w" / "model",
                                                                        tmp_path / "s")):
        r = subprocess.run([sys.executable, "-m", "rl.indexer_train", f"+experiment={exp}", f"model.path={path}",
                            f"hydra.run.dir={out}", *common], check=False, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads((out / "indexer_report.json").read_text())["stage"] == exp.removeprefix("dsa_")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "s" / "model")
    assert type(model).__name__ == "DSALlamaForCausalLM" and model.config.attention_mode == "sparse"


def test_warmup_on_a_deepseek_v3_checkpoint(tmp_path):
    """`model.path=` a DeepSeek-V3 checkpoint: converted once (cached) into the native MLA policy with fresh
    indexers; the dense warm-up trains only them (dense LM loss unchanged) and the report has every layer."""
    from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

    from rl.policy.tokenizer import load_tokenizer

    tok = load_tokenizer()
    torch.manual_seed(0)
    DeepseekV3ForCausalLM(DeepseekV3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, n_group=2, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )).save_pretrained(tmp_path / "v3")
    tok.save_pretrained(tmp_path / "v3")
    c = _stage_config(tmp_path / "v3", "warmup", 5)
    c.data.cache_dir = str(tmp_path / "cache")
    rep = run(c, str(tmp_path / "warm"), log=lambda s: None)
    assert len(rep["before"]["recall"]) == len(rep["after"]["recall"]) == 2
    assert rep["after"]["lm_dense"] == pytest.approx(rep["before"]["lm_dense"], abs=1e-6)
    assert rep["first_loss"] != rep["last_loss"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "warm" / "model")
    assert type(model).__name__ == "DSAForCausalLM" and model.config.index_topk == 8
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1
