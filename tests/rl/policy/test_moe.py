"""DeepSeekMoE gating: hand-computed routes and weights (sigmoid and softmax), Keep Routing, no-MoE."""
from __future__ import annotations

import math

import torch

from rl.policy.moe import MoE


def _moe_with_logits(make_config, logits: list[float], gate: str) -> tuple[MoE, torch.Tensor]:
    cfg = make_config(moe_gate=gate, routed_scaling_factor=2.0)
    moe = MoE(cfg)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[:, 0] = torch.tensor(logits)
    h = torch.zeros(1, 1, cfg.hidden_size)
    h[..., 0] = 1.0  # gate(h) = logits
    return moe, h


def test_sigmoid_gate_hand_values(make_config) -> None:
    moe, h = _moe_with_logits(make_config, [0.0, 2.0, -1.0, 1.0], "sigmoid")
    routes, weights = moe.route(h, None)
    assert sorted(routes[0, 0].tolist()) == [1, 3]
    s1, s3 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0))
    got = dict(zip(routes[0, 0].tolist(), weights[0, 0].tolist(), strict=True))
    assert math.isclose(got[1], 2.0 * s1 / (s1 + s3), rel_tol=1e-6)
    assert math.isclose(got[3], 2.0 * s3 / (s1 + s3), rel_tol=1e-6)
    # the balancing bias moves the choice, not the weights' source
    moe.e_score_correction_bias[2] = 5.0
    routes, weights = moe.route(h, None)
    assert sorted(routes[0, 0].tolist()) == [1, 2]


def test_softmax_gate_hand_values(make_config) -> None:
    moe, h = _moe_with_logits(make_config, [0.0, 2.0, -1.0, 1.0], "softmax")
    routes, weights = moe.route(h, None)
    got = dict(zip(routes[0, 0].tolist(), weights[0, 0].tolist(), strict=True))
    e1, e3 = math.exp(2.0), math.exp(1.0)
    assert set(got) == {1, 3}
    assert math.isclose(got[1], 2.0 * e1 / (e1 + e3), rel_tol=1e-6)


def test_forward_is_shared_plus_weighted_experts(make_config) -> None:
    moe, h = _moe_with_logits(make_config, [0.0, 2.0, -1.0, 1.0], "sigmoid")
    h = h + 0.1 * torch.randn_like(h)
    with torch.no_grad():
        out, routes = moe(h)
        _, weights = moe.route(h, routes)
        want = moe.shared(h)
        for j in range(routes.shape[-1]):
            want = want + weights[0, 0, j] * moe.experts[routes[0, 0, j].item()](h)
    torch.testing.assert_close(out, want)


def test_keep_routing_enforces_given_experts(make_config) -> None:
    torch.manual_seed(0)
    moe = MoE(make_config())
    h = torch.randn(2, 5, moe.gate.in_features)
    with torch.no_grad():
        out, routes = moe(h)
        again, same = moe(h, routes)
        assert torch.equal(again, out) and torch.equal(same, routes)
        other = (routes + 1) % moe.n_experts
        changed, used = moe(h, other)
    assert torch.equal(used, other) and (changed - out).abs().max() > 1e-5


def test_no_moe_option(make_model) -> None:
    model = make_model(n_routed_experts=0, n_shared_experts=0)
    assert model.config.moe_layer_indices == []
    assert not any(isinstance(m, MoE) for m in model.modules())
    out = model(torch.randint(0, 64, (1, 6)), output_expert_routes=True, use_cache=False)
    assert out.expert_routes == ()
