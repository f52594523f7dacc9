"""DSACache: allocation, validity bookkeeping in both mask conventions, growth, row selection."""
from __future__ import annotations

import pytest
import torch

from rl.policy import DSACache


def test_allocate_shapes(make_config) -> None:
    cfg = make_config()
    cache = DSACache.allocate(cfg, batch_size=3, max_len=10)
    assert len(cache.latents) == len(cache.index_keys) == cfg.num_hidden_layers
    assert cache.latents[0].shape == (3, 10, cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    assert cache.index_keys[0].shape == (3, 10, cfg.index_head_dim)
    assert cache.get_seq_length() == 0 and cache.is_linear == [False] * cfg.num_hidden_layers


def test_update_valid_mask_conventions(make_config) -> None:
    cache = DSACache.allocate(make_config(), 2, 8)
    v = cache.update_valid(0, torch.tensor([[0, 1, 1], [1, 1, 1]]), 3)
    assert v.tolist() == [[False, True, True], [True, True, True]]
    cache.advance(3)
    v = cache.update_valid(3, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]), 1)  # full-length (HF) mask
    assert v.shape == (2, 4) and v[:, 3].all() and not v[0, 0]
    v = cache.update_valid(3, torch.tensor([[1], [0]]), 1)  # new-token-only mask
    assert v[:, 3].tolist() == [True, False]
    with pytest.raises(ValueError, match="columns"):
        cache.update_valid(3, torch.ones(2, 2), 1)


def test_growth_keeps_contents_and_write_returns_prefix(make_config) -> None:
    cache = DSACache.allocate(make_config(), 1, 2)
    entry = torch.randn(1, 2, cache.latents[0].shape[-1])
    keys = torch.randn(1, 2, cache.index_keys[0].shape[-1])
    cache.update_valid(0, None, 2)
    cache.write(0, 0, entry, keys)
    cache.advance(2)
    cache.update_valid(2, None, 3)  # needs 5 slots: grows
    assert cache.capacity >= 5
    lat, ik = cache.write(0, 2, torch.ones(1, 3, entry.shape[-1]), torch.ones(1, 3, keys.shape[-1]))
    assert lat.shape[1] == 5 and torch.equal(lat[:, :2], entry) and torch.equal(ik[:, :2], keys)


def test_select_rows(make_config) -> None:
    cache = DSACache.allocate(make_config(), 3, 4)
    cache.latents[0][1] = 7.0
    cache.select_rows(torch.tensor([1]))
    assert cache.batch_size == 1 and cache.latents[0].eq(7.0).all()
