"""MLA internals: the sparse path rule, KVUpProjection's three forms, gather_rows, path agreement."""
from __future__ import annotations

import pytest
import torch

from rl.policy import mla
from rl.policy.mla import KVUpProjection, attention_path, gather_rows


def test_attention_path_rule_hand_values() -> None:
    # tiny preset: H=4, kv_lora=64, dn=dv=32, k=32, chunk 1024
    tiny = {"k": 32, "n_heads": 4, "kv_lora": 64, "dn": 32, "dv": 32, "chunk": 1024}
    assert attention_path(1, 32, **tiny) == "absorbed"  # S <= k: every key selected
    assert attention_path(1, 40, **tiny) == "absorbed"  # 32 * 5 = 160 == 4 * 40: not below
    assert attention_path(1, 41, **tiny) == "gather"  # 160 < 164
    assert attention_path(16, 130, **tiny) == "gather"
    assert attention_path(17, 130, **tiny) == "absorbed"  # past GATHER_MAX_QUERIES
    assert attention_path(64, 192, **tiny) == "absorbed"  # 64 * 64 == 64 * 64: not above
    assert attention_path(65, 192, **tiny) == "expanded"
    # V3.2: dn + dv = 256 must fit in the rows, and T (1024 - 256) > 256 * 512 needs T > 170.
    v32 = {"k": 2048, "n_heads": 128, "kv_lora": 512, "dn": 128, "dv": 128, "chunk": 1024}
    assert attention_path(171, 8192, **v32) == "absorbed"  # 171 < dn + dv
    assert attention_path(256, 8192, **v32) == "expanded"
    assert attention_path(4096, 8192, **{**v32, "chunk": 128}) == "absorbed"  # 256 > chunk rows


def test_kv_up_projection_forms_match_einsum() -> None:
    torch.manual_seed(0)
    H, dn, dv, c = 3, 4, 5, 6
    proj = KVUpProjection(c, H, dn, dv)
    w = proj.weight.view(H, dn + dv, c)
    lat = torch.randn(2, 7, c)
    torch.testing.assert_close(proj(lat), lat @ proj.weight.T)
    q = torch.randn(2, 7, H, dn)
    torch.testing.assert_close(proj(q, "absorb_query"), torch.einsum("bthn,hnc->bthc", q, w[:, :dn]))
    o = torch.randn(2, 7, H, c)
    torch.testing.assert_close(proj(o, "expand_values"), torch.einsum("bthc,hvc->bthv", o, w[:, dn:]))
    with pytest.raises(ValueError, match="form"):
        proj(o, "nope")


def test_gather_rows_plain_and_cache_slice() -> None:
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).view(2, 10, 3)
    idx = torch.tensor([[[0, 4], [9, 1]], [[2, 2], [7, 0]]])  # (B=2, C=2, k=2)
    want = torch.stack([x[b, idx[b]] for b in range(2)])  # (2, 2, 2, 3)
    torch.testing.assert_close(gather_rows(x, idx), want)
    sliced = x[:, :8]  # a cache view: strides of the 10-slot buffer
    idx8 = idx.clamp(max=7)
    torch.testing.assert_close(gather_rows(sliced, idx8), torch.stack([x[b, idx8[b]] for b in range(2)]))
    xg = x.clone().requires_grad_()
    gather_rows(xg, idx).sum().backward()
    assert xg.grad[0, 4].tolist() == [1.0, 1.0, 1.0] and xg.grad[1, 2].tolist() == [2.0, 2.0, 2.0]


@torch.no_grad()
@pytest.mark.parametrize("T", [3, 24])
def test_sparse_paths_agree(make_model, monkeypatch, T) -> None:
    """Given one selection, the gather / absorbed / expanded paths compute the same attention."""
    model = make_model()
    x = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    ref = model(x, output_topk_indices=True, use_cache=False)
    for path in mla.PATHS:
        monkeypatch.setattr(mla, "attention_path", lambda *a, p=path: p)
        out = model(x, topk_indices=ref.topk_indices, use_cache=False)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
