"""rl.kl: hand values, gradient flow, and the unbiasedness of V3.2's estimator by exact enumeration."""
from __future__ import annotations

import math

import pytest
import torch

from rl.kl import KL_ESTIMATORS, get_kl, kl_k3, kl_unbiased_k3, register_kl

# One token: pi_theta = 0.5, pi_ref = 0.25, pi_old = 0.4.
P, S, Q = 0.5, 0.25, 0.4
LN2 = math.log(2.0)
HAND = {  # value, d value / d logp
    "k1": (LN2, 1.0),
    "k2": (0.5 * LN2**2, LN2),  # 0.240227
    "k3": (S / P - math.log(S / P) - 1, 1 - S / P),  # 0.193147, 0.5
    "unbiased_k3": (P / Q * (S / P - math.log(S / P) - 1), P / Q * LN2),  # 0.241434, 0.866434
}


def test_registry() -> None:
    assert set(KL_ESTIMATORS.names()) >= {"k1", "k2", "k3", "unbiased_k3"}
    assert get_kl("unbiased_k3") is kl_unbiased_k3
    with pytest.raises(ValueError, match="already registered"):
        register_kl("k3")(kl_k3)


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_values_and_gradients(name: str) -> None:
    logp = torch.tensor([[math.log(P)]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[math.log(S)]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[math.log(Q)]], dtype=torch.float64, requires_grad=True)
    value = get_kl(name)(logp, ref, old)
    assert value.shape == (1, 1)
    value.sum().backward()
    want_value, want_grad = HAND[name]
    assert value.item() == pytest.approx(want_value, abs=1e-12)
    assert logp.grad.item() == pytest.approx(want_grad, abs=1e-12)
    assert ref.grad is None and old.grad is None  # reference and sampler are constants


def _policies() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """theta (V=5 logits, a parameter) and fixed log pi_old, log pi_ref, all different."""
    theta = torch.tensor([0.3, -1.0, 0.8, 0.0, -0.4], dtype=torch.float64, requires_grad=True)
    old = torch.log_softmax(torch.tensor([0.0, -0.5, 1.2, 0.4, -1.0], dtype=torch.float64), 0)
    ref = torch.log_softmax(torch.tensor([-0.7, 0.9, 0.1, 0.5, 0.2], dtype=torch.float64), 0)
    return theta, old, ref


def _expected_grad(name: str, sampler: str = "old") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact E_{a ~ sampler}[estimator(a)] and its gradient w.r.t. theta, by enumerating a."""
    theta, old, ref = _policies()
    logp = torch.log_softmax(theta, 0)  # (V,)
    old_logp = logp.detach() if sampler == "theta" else old
    weights = old_logp.exp()  # the sampling distribution, a constant
    value = (weights * get_kl(name)(logp[None], ref[None], old_logp[None])[0]).sum()
    (grad,) = torch.autograd.grad(value, theta)
    return value.detach(), grad


def _exact_kl_grad(forward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(pi_theta || pi_ref) (or KL(pi_ref || pi_theta)) and its gradient, in closed form."""
    theta, _, ref = _policies()
    logp = torch.log_softmax(theta, 0)
    kl = (ref.exp() * (ref - logp)).sum() if forward else (logp.exp() * (logp - ref)).sum()
    (grad,) = torch.autograd.grad(kl, theta)
    return kl.detach(), grad


def test_unbiased_k3_has_the_exact_kl_gradient_under_pi_old() -> None:
    kl, grad_kl = _exact_kl_grad()
    value_u, grad_u = _expected_grad("unbiased_k3")
    value_k3, grad_k3 = _expected_grad("k3")
    print(f"\nKL(pi_theta||pi_ref) = {kl.item():.6f}  E_old[unbiased_k3] = {value_u.item():.6f}  "
          f"E_old[k3] = {value_k3.item():.6f}")
    print(f"grad KL              = {grad_kl.numpy().round(6)}")
    print(f"E_old[grad unb. k3]  = {grad_u.numpy().round(6)}")
    print(f"E_old[grad k3]       = {grad_k3.numpy().round(6)}")
    torch.testing.assert_close(grad_u, grad_kl, atol=1e-6, rtol=0)
    assert value_u.item() == pytest.approx(kl.item(), abs=1e-6)
    # Plain k3 under pi_old is wrong in value and in gradient, by a wide margin.
    assert (grad_k3 - grad_kl).norm() > 0.1 * grad_kl.norm()
    assert abs(value_k3.item() - kl.item()) > 0.01


def test_detaching_the_ratio_gives_the_forward_kl_gradient() -> None:
    """The documented mistake: r without gradient turns the gradient into grad KL(pi_ref || pi_theta)."""
    theta, old, ref = _policies()
    logp = torch.log_softmax(theta, 0)
    ratio = (logp - old).exp().detach()
    value = (old.exp() * ratio * kl_k3(logp[None], ref[None], old[None])[0]).sum()
    (grad,) = torch.autograd.grad(value, theta)
    _, grad_fwd = _exact_kl_grad(forward=True)
    _, grad_rev = _exact_kl_grad()
    torch.testing.assert_close(grad, grad_fwd, atol=1e-10, rtol=0)
    assert (grad - grad_rev).norm() > 0.1 * grad_rev.norm()


def test_on_policy_properties_of_k1_k2_k3() -> None:
    """With pi_old = pi_theta: E[k1] = E[k3] = KL; grads: k2 -> grad KL, k1 -> 0, k3 -> forward KL."""
    kl, grad_kl = _exact_kl_grad()
    _, grad_fwd = _exact_kl_grad(forward=True)
    v1, g1 = _expected_grad("k1", sampler="theta")
    v2, g2 = _expected_grad("k2", sampler="theta")
    v3, g3 = _expected_grad("k3", sampler="theta")
    vu, gu = _expected_grad("unbiased_k3", sampler="theta")
    assert v1.item() == pytest.approx(kl.item(), abs=1e-12)
    assert v3.item() == pytest.approx(kl.item(), abs=1e-12)
    assert vu.item() == pytest.approx(kl.item(), abs=1e-12)
    assert abs(v2.item() - kl.item()) > 1e-3  # k2 is biased in value
    torch.testing.assert_close(g1, torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(g2, grad_kl, atol=1e-12, rtol=0)
    torch.testing.assert_close(g3, grad_fwd, atol=1e-12, rtol=0)
    torch.testing.assert_close(gu, grad_kl, atol=1e-12, rtol=0)


def test_unbiased_k3_equals_literal_formula_on_random_inputs() -> None:
    g = torch.Generator().manual_seed(1)
    logp, ref, old = (-torch.rand(3, 7, generator=g, dtype=torch.float64) * 4 for _ in range(3))
    literal = torch.exp(logp - old) * (torch.exp(ref - logp) - (ref - logp) - 1)
    torch.testing.assert_close(kl_unbiased_k3(logp, ref, old), literal, atol=1e-12, rtol=1e-10)
