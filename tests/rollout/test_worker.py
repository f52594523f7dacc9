"""rollout.worker without Ray: versioned weight loading, index stamping, the broadcast weight group."""
from __future__ import annotations

import socket
import threading

import torch

from rollout.engine import RolloutEngine
from rollout.sampling import SamplingParams
from rollout.worker import RolloutWorker, broadcast_state, weight_group


def test_worker_loads_versioned_weights(model, make_model, tok, prompts) -> None:
    w = RolloutWorker(model.config.to_dict(), num_threads=1, state_dict=model.state_dict())
    assert w.version() == 0
    params = SamplingParams(greedy=True, max_new_tokens=8)
    out = w.generate(prompts, params, prompt_indices=[5, 6, 7, 8], sample_indices=[0, 1, 0, 1])
    ref = RolloutEngine(model, tok).generate(prompts, params)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(out, ref))
    assert [(t.prompt_index, t.sample_index, t.weight_version) for t in out] == [(5, 0, 0), (6, 1, 0), (7, 0, 0),
                                                                                 (8, 1, 0)]
    other = make_model(seed=1)
    assert w.load_weights(other.state_dict(), 3) == 3 and w.version() == 3
    out = w.generate(prompts, params)
    ref = RolloutEngine(other, tok).generate(prompts, params)
    assert all(torch.equal(a.tokens, b.tokens) and a.weight_version == 3 for a, b in zip(out, ref))


def test_gloo_weight_group_broadcast() -> None:
    """The collective path (NCCL on GPU) with gloo on CPU: rank 0's tensors reach rank 1 in order."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    src = [torch.arange(6.0).view(2, 3), torch.tensor([7, 8], dtype=torch.int64)]
    dst = [torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64)]

    def receiver() -> None:
        broadcast_state(weight_group("gloo", "127.0.0.1", port, 1, 2), dst)

    th = threading.Thread(target=receiver)
    th.start()
    broadcast_state(weight_group("gloo", "127.0.0.1", port, 0, 2), src)
    th.join(timeout=60)
    assert all(torch.equal(a, b) for a, b in zip(src, dst))
