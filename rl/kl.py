"""Per-token KL estimators for the GRPO penalty, in a name registry (``algorithm.kl_estimator``).

Every estimator has the signature ``(logp, ref_logp, old_logp) -> (B, T)``: the log-probabilities of
the sampled tokens under pi_theta (carries the gradient), the frozen reference pi_ref and the
sampling policy pi_old (both detached here, whatever the caller passes). Write ``d = ref_logp - logp
= log(pi_ref / pi_theta)`` and ``r = exp(logp - old_logp) = pi_theta / pi_old``.

    k1           -d = log(pi_theta / pi_ref)
    k2           d^2 / 2
    k3           e^d - d - 1                      (Schulman's k3: >= 0, low variance)
    unbiased_k3  r * (e^d - d - 1)                (DeepSeek-V3.2)

Samples come from pi_old, not pi_theta (the rollout engine's policy, several updates stale and
with its own numerics). Under that sampling distribution only ``unbiased_k3`` gives both the exact
value and the exact gradient of the reverse KL(pi_theta || pi_ref) in expectation; the others are
the usual on-policy estimators, correct (if at all) only when pi_old = pi_theta:

* value, on-policy: E[k1] = E[k3] = KL (k2 is biased); gradient, on-policy: E[grad k2] = grad KL,
  E[grad k1] = 0, E[grad k3] = grad KL(pi_ref || pi_theta) (the forward KL, not the reverse).
* unbiased_k3, derivation (one token, actions a, sums over the vocabulary, p = pi_theta,
  q = pi_old, s = pi_ref; the gradient flows through both p in r = p/q and p inside d):

      E_{a~q}[ (p/q) (s/p - log(s/p) - 1) ] = sum_a s - p log s + p log p - p
                                             = KL(p || s) + sum_a s - sum_a p = KL(p || s)
  and since the sum over a is a fixed finite set the gradient commutes with it:
      E_{a~q}[ grad unbiased_k3(a) ] = grad sum_a (s - p log s + p log p - p) = grad KL(p || s).
  Per sample, grad unbiased_k3 = r * (logp - ref_logp) * grad logp: bounded by r instead of
  k3's ``1 - pi_ref / pi_theta`` factor, which explodes when pi_theta << pi_ref.
  Detaching r (a common mistake) gives E_q[r grad k3] = E_{a~p}[grad k3] = grad KL(s || p) (with
  the sampling distribution held fixed): the forward-KL direction again.

In the autoregressive case these hold per token, conditional on the sampled prefix (the same
approximation every token-level GRPO makes). Departure from the paper: none in the formula; we
compute ``e^d - 1`` with ``expm1`` for accuracy at small d. Nothing is clamped: an infinite value
(a taken token outside pi_theta's support) propagates and shows up in the loss.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from rl.registry import Registry


class KLEstimator(Protocol):
    def __call__(self, logp: Tensor, ref_logp: Tensor, old_logp: Tensor) -> Tensor:
        ...


KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")


def register_kl(name: str):
    """Decorator registering a KL estimator under ``name`` (a duplicate name raises)."""
    return KL_ESTIMATORS.register(name)


def get_kl(name: str) -> KLEstimator:
    """The KL estimator registered as ``name`` (k1, k2, k3, unbiased_k3, ...)."""
    return KL_ESTIMATORS.get(name)


@register_kl("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor, old_logp: Tensor) -> Tensor:
    """``log(pi_theta / pi_ref)`` per token, ``(B, T)``. ``old_logp`` is unused."""
    return logp - ref_logp.detach()


@register_kl("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor, old_logp: Tensor) -> Tensor:
    """``0.5 * log(pi_theta / pi_ref)^2`` per token, ``(B, T)``. ``old_logp`` is unused."""
    return 0.5 * (logp - ref_logp.detach()).square()


def _k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    d = ref_logp.detach() - logp  # log(pi_ref / pi_theta), (B, T)
    return torch.expm1(d) - d


@register_kl("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor, old_logp: Tensor) -> Tensor:
    """``pi_ref/pi_theta - log(pi_ref/pi_theta) - 1`` per token, ``(B, T)``. ``old_logp`` unused."""
    return _k3(logp, ref_logp)


@register_kl("unbiased_k3")
def kl_unbiased_k3(logp: Tensor, ref_logp: Tensor, old_logp: Tensor) -> Tensor:
    """DeepSeek-V3.2's k3 weighted by ``pi_theta / pi_old`` (the ratio carries gradient), ``(B, T)``.

    ``exp(logp - old_logp) * (exp(ref_logp - logp) - (ref_logp - logp) - 1)``; its expectation and
    its expected gradient under a ~ pi_old are exactly KL(pi_theta || pi_ref) and its gradient
    (derivation in the module docstring).
    """
    ratio = torch.exp(logp - old_logp.detach())  # pi_theta / pi_old, with gradient
    return ratio * _k3(logp, ref_logp)
