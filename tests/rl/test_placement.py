"""Tests for rl.placement: bundle plans from the config, the fit check, and (on a small local Ray)
that actors started with the returned options sit in the reserved groups."""
from __future__ import annotations

import pytest

from rl.placement import PlacementError, check_fits, plan_bundles
from rl.submit import compose


def test_plan_bundles_from_resources():
    cfg = compose(["+experiment=math", "deepspeed.num_processes=3", "rollout.num_workers=2",
                   "resources.gpus_per_trainer=1", "resources.gpus_per_worker=0.5", "resources.cpus_per_actor=2"])
    assert plan_bundles(cfg) == {"trainer": [{"CPU": 2.0, "GPU": 1.0}] * 3,
                                 "rollout": [{"CPU": 2.0, "GPU": 0.5}] * 2}
    one = compose(["+experiment=math"])  # one in-process trainer: no trainer bundles; no GPU key at 0
    assert plan_bundles(one) == {"trainer": [], "rollout": [{"CPU": 1.0}] * 2}  # the experiment's 2 workers


def test_check_fits():
    plan = {"trainer": [{"CPU": 1.0, "GPU": 1.0}] * 16, "rollout": [{"CPU": 1.0}] * 4}
    nodes = [{"CPU": 32.0, "GPU": 8.0}] * 2
    check_fits(plan, {"CPU": 64.0, "GPU": 16.0}, nodes)  # 16 GPUs on 2 x 8: fits (spans both nodes)
    with pytest.raises(PlacementError, match=r"need 16 GPU \(16 trainer x 1, 4 rollout x 0\) but the Ray "
                                             r"cluster has 8"):
        check_fits(plan, {"CPU": 64.0, "GPU": 8.0}, nodes[:1])
    with pytest.raises(PlacementError, match="a trainer actor needs .* but no single Ray node"):
        check_fits({"trainer": [{"CPU": 4.0}], "rollout": []}, {"CPU": 6.0}, [{"CPU": 3.0}] * 2)


@pytest.mark.slow
def test_actors_land_in_their_groups():
    import ray

    from rl.placement import place

    cfg = compose(["+experiment=math", "deepspeed.num_processes=2", "rollout.num_workers=1",
                   "resources.cpus_per_actor=0.5"])
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        p = place(cfg, timeout_s=30)
        assert len(p.groups) == 2

        @ray.remote(num_cpus=0.5)
        def where():
            return ray.get_runtime_context().get_placement_group_id()

        got = ray.get([where.options(**p.trainer_options).remote(), where.options(**p.worker_options).remote()])
        assert got == [p.groups[0].id.hex(), p.groups[1].id.hex()]
        p.remove()
        assert p.groups == []
    finally:
        ray.shutdown()
