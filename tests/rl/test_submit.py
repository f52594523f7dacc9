"""Tests for rl.submit: the rendered sbatch script, bad input refused before submission, and (slow)
a 2-step math run through a real Ray head and a real one-node Slurm on loopback."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rl.submit import compose, main, render_sbatch, run_dir_for, train_command

sys.path.insert(0, str(Path(__file__).parent))
from _schedulers import free_port, ray_head, slurm_cluster

TINY = ["+experiment=math", "budget=smoke", "coldstart.sft_steps=10", "coldstart.indexer_warmup_steps=2",
        "coldstart.sparse_steps=2", "data.synth.num_train=200", "data.synth.num_test=50", "data.test_size=16",
        "rollout.prompts_per_step=2", "algorithm.group_size=4", "algorithm.mini_batch_size=8",
        "algorithm.micro_batch_size=8", "logger=none"]
"""The 2-step math run of the end-to-end tests (budget=smoke: max_steps=2)."""
GPU_4x8 = ["cluster=slurm", "+experiment=math", "cluster.nodes=4", "cluster.gpus_per_node=8",
           "resources.gpus_per_trainer=1", "resources.gpus_per_worker=1", "deepspeed.num_processes=24",
           "rollout.num_workers=8", "cluster.partition=gpu", "cluster.account=proj", "cluster.time=02:00:00"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty directory (default run dirs land there) with no RAY_ADDRESS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def _fake_slurm(bin_dir: Path, partitions: str) -> Path:
    """``sinfo`` that lists ``partitions``; ``sbatch`` that records being called. Returns the record."""
    bin_dir.mkdir()
    called = bin_dir / "sbatch_called"
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\nprintf '{partitions}'\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {called}\necho 1\n")
    for f in ("sinfo", "sbatch"):
        (bin_dir / f).chmod(0o755)
    return called


# ---- the rendered script -----------------------------------------------------------------------
def test_sbatch_for_4_nodes_x_8_gpus(tmp_path):
    cfg = compose(GPU_4x8)
    run_dir = tmp_path / "run"
    script = render_sbatch(cfg, train_command(GPU_4x8, run_dir, ['cluster.address="$head_ip:$port"']), run_dir)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [ln for ln in lines if ln.startswith("#SBATCH")]
    assert directives == ["#SBATCH --job-name=dsa-rl-math", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1",
                          "#SBATCH --exclusive", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                          "#SBATCH --account=proj", "#SBATCH --time=02:00:00",
                          f"#SBATCH --output={run_dir}/slurm-%j.out"]
    assert re.search(r"@[A-Z_]+@", script) is None  # every placeholder filled
    # Ray head on the first node, one worker per other node, each told it has 8 GPUs.
    assert 'srun --overlap --nodes=1 --ntasks=1 --gpus-per-node=8 -w "${nodes[0]}"' in script
    assert 'srun --overlap --nodes=1 --ntasks=1 --gpus-per-node=8 -w "$node"' in script
    assert script.count("--num-gpus=8") == 2
    assert "ray start --head --block" in script and 'ray start --block --address="$head_ip:$port"' in script
    assert 'python -m rl.submit --wait-nodes "$head_ip:$port" 4 300' in script
    train = [ln for ln in lines if ln.startswith("python -m rl.train")]
    assert train == ["python -m rl.train " + " ".join(GPU_4x8) + ' cluster.address="$head_ip:$port" '
                     f"hydra.run.dir={run_dir}"]
    assert lines[-3:] == ["stop_ray", 'echo "rl.train exited with status $rc"', "exit $rc"]
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0


def test_dry_run_prints_the_script_and_writes_nothing(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.defpath)  # no sinfo: the partition is not checked on a dry run
    assert main([*GPU_4x8, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=4" in out and "python -m rl.train" in out
    assert list(in_tmp.iterdir()) == []


def test_from_manifest_reuses_the_overrides(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.defpath)
    from rl.manifest import build_manifest, write_manifest

    old = in_tmp / "old"
    write_manifest(old, build_manifest(overrides=[*GPU_4x8, f"hydra.run.dir={old}"], config={},
                                       cluster={"kind": "slurm"}, run_dir=old, repo=in_tmp))
    assert main(["--from-manifest", str(old / "manifest.json"), "cluster.nodes=5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=5" in out and "#SBATCH --partition=gpu" in out
    assert f"hydra.run.dir={old}" not in out  # a re-submission gets a fresh run dir


def test_from_manifest_leaves_out_redacted_secrets(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.defpath)
    from rl.manifest import build_manifest, write_manifest

    old = in_tmp / "old"
    write_manifest(old, build_manifest(overrides=["cluster=slurm", "+experiment=math", "cluster.env.MY_TOKEN=s3",
                                                  "+cluster.env.HF_HOME=/h"], config={}, cluster={}, run_dir=old,
                                       repo=in_tmp))
    assert "s3" not in (old / "manifest.json").read_text()
    assert main(["--from-manifest", str(old), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "note: left out redacted overrides (set them again): cluster.env.MY_TOKEN=<redacted>" in err
    assert "export HF_HOME=/h" in out and "MY_TOKEN" not in out


def test_run_dir_default_and_collision(in_tmp):
    import datetime as dt

    cfg = compose(["+experiment=math"])
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = run_dir_for(cfg, [], now)
    assert first == in_tmp / "outputs" / "math" / "2026-01-02_03-04-05"
    first.mkdir(parents=True)
    assert run_dir_for(cfg, [], now).name == "2026-01-02_03-04-05_1"
    assert run_dir_for(cfg, ["hydra.run.dir=x/y"], now) == in_tmp / "x" / "y"


def test_train_command_quotes_and_replaces_address(tmp_path):
    cmd = train_command(["cluster.address=1.2.3.4:6379", "rollout.stop=['a b']", "hydra.run.dir=old"], tmp_path,
                        ['cluster.address="$head_ip:$port"'])
    assert cmd == ("python -m rl.train 'rollout.stop=['\"'\"'a b'\"'\"']' cluster.address=\"$head_ip:$port\" "
                   f"hydra.run.dir={tmp_path}")


# ---- bad input: one message, nothing submitted ---------------------------------------------------
def test_missing_gpu_count_is_refused(in_tmp, capsys):
    rc = main(["cluster=slurm", "+experiment=math", "resources.gpus_per_trainer=1", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == ("error: resources.gpus_per_trainer=1 asks for GPUs but cluster.gpus_per_node=0: set "
                   "cluster.gpus_per_node to the GPUs of each node (or use resources.gpus_per_*=0 for a CPU run)")
    assert list(in_tmp.iterdir()) == []


def test_too_few_gpus_is_refused(in_tmp, capsys):
    rc = main(["cluster=slurm", "+experiment=math", "cluster.gpus_per_node=8", "resources.gpus_per_trainer=1",
               "deepspeed.num_processes=9", "--dry-run"])
    assert rc == 2
    assert "the actors need 9 GPUs (9 trainers x 1 + 2 rollout workers x 0) but cluster.nodes=1 x " \
           "cluster.gpus_per_node=8 = 8" in capsys.readouterr().err


def test_unknown_partition_is_refused(in_tmp, capsys, monkeypatch):
    called = _fake_slurm(in_tmp / "bin", "debug\\ngpu\\n")
    monkeypatch.setenv("PATH", f"{in_tmp / 'bin'}{os.pathsep}{os.environ['PATH']}")
    rc = main(["cluster=slurm", "+experiment=math", "cluster.partition=nope"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == ("error: cluster.partition='nope' is not a partition of this Slurm "
                                               "cluster (partitions: debug, gpu)")
    assert not called.exists() and sorted(p.name for p in in_tmp.iterdir()) == ["bin"]


def test_unreachable_ray_address_is_refused(in_tmp, capsys):
    port = free_port()
    rc = main(["cluster=ray_job", f"cluster.address=http://127.0.0.1:{port}", "+experiment=math"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(f"error: cluster.address='http://127.0.0.1:{port}': nothing answers at 127.0.0.1:{port}")
    assert list(in_tmp.iterdir()) == []


def test_ray_job_without_address_is_refused(in_tmp, capsys):
    assert main(["cluster=ray_job", "+experiment=math"]) == 2
    assert capsys.readouterr().err.strip() == ("error: cluster=ray_job needs the head's dashboard address: "
                                               "cluster.address=http://HEAD:8265 or RAY_ADDRESS")


def test_local_and_config_errors_are_refused(in_tmp, capsys):
    assert main(["+experiment=math"]) == 2
    assert "cluster.kind=local: nothing to submit" in capsys.readouterr().err
    assert main(["cluster=slurm", "algorithm.group_size=1", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == ("error: config error: algorithm.group_size=1 is invalid: "
                                               "must be >= 2")
    assert main(["cluster=slurm", "cluster.nodse=2", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == ("error: config error: Could not override 'cluster.nodse'. "
                                               "(To append to your config use +cluster.nodse=2)")
    assert main(["cluster=slurmx", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == ("error: config error: In 'train': Could not find 'cluster/slurmx' "
                                               "(Available options in 'cluster': local ray_job slurm)")
    assert list(in_tmp.iterdir()) == []


# ---- real schedulers on loopback ----------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cold-start cache for both end-to-end runs (the second reuses the first's policy)."""
    return tmp_path_factory.mktemp("dsa_cache")


def _check_run(run_dir: Path, job_id: str, kind: str) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["job_id"] == job_id and manifest["cluster"]["kind"] == kind
    assert manifest["config"]["budget"]["max_steps"] == 2 and "budget=smoke" in manifest["overrides"]
    assert len(manifest["git"]["commit"]) == 40 and isinstance(manifest["git"]["dirty"], bool)
    assert manifest["packages"]["torch"] and manifest["packages"]["ray"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["run_dir"] == str(run_dir)
    return manifest


@pytest.mark.slow
def test_ray_job_end_to_end(in_tmp, cache_dir, capsys, monkeypatch):
    monkeypatch.setenv("DSA_RL_CACHE", str(cache_dir))
    run_dir = in_tmp / "run"
    with ray_head(num_cpus=2) as head:
        address = [f"cluster.address={head.dashboard}"]
        t0 = time.monotonic()
        rc = main(["cluster=ray_job", *address, *TINY, f"hydra.run.dir={run_dir}", "--follow"])
        out = capsys.readouterr().out
        assert rc == 0, out[-3000:]
        job_id = next(ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("job id: "))
        assert f"job {job_id}: SUCCEEDED" in out
        print(f"ray_job 2-step run: {time.monotonic() - t0:.0f} s", file=sys.stderr)
        _check_run(run_dir, job_id, "ray_job")
        assert main(["--logs", job_id, "cluster=ray_job", *address]) == 0
        assert "stopped by max_steps (2 >= 2)" in capsys.readouterr().out
        # Re-submit from the manifest (fresh run dir under ./outputs), list it, stop it.
        assert main(["--from-manifest", str(run_dir / "manifest.json")]) == 0
        second = next(ln.split(": ", 1)[1] for ln in capsys.readouterr().out.splitlines()
                      if ln.startswith("job id: "))
        assert second != job_id and len(list((in_tmp / "outputs" / "math").iterdir())) == 1
        assert main(["--list", "cluster=ray_job", *address]) == 0
        listed = capsys.readouterr().out
        assert f"{job_id}  SUCCEEDED" in listed and second in listed
        assert main(["--stop", second, "cluster=ray_job", *address]) == 0
        end = time.monotonic() + 60
        while time.monotonic() < end:
            main(["--status", second, "cluster=ray_job", *address])
            if capsys.readouterr().out.strip() in ("STOPPED", "FAILED", "SUCCEEDED"):
                break
            time.sleep(1)
        main(["--status", second, "cluster=ray_job", *address])
        assert capsys.readouterr().out.strip() == "STOPPED"


@pytest.mark.slow
def test_slurm_end_to_end(in_tmp, cache_dir, capsys, monkeypatch):
    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld not installed (apt-get install -y slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm runs slurmctld/slurmd as root (SlurmUser=root): run as root")
    monkeypatch.setenv("DSA_RL_CACHE", str(cache_dir))
    run_dir = in_tmp / "run"
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's unix sockets live there
    head_args = (f"cluster.ray_head_args=['--temp-dir={ray_tmp}','--ray-client-server-port={free_port()}',"
                 f"'--dashboard-agent-listen-port={free_port()}']")
    try:
        with slurm_cluster(cpus=2) as slurm:
            for k, v in slurm.env.items():
                monkeypatch.setenv(k, v)
            assert main(["cluster=slurm", "cluster.partition=nope", *TINY]) == 2
            assert "partitions: debug" in capsys.readouterr().err
            t0 = time.monotonic()
            # One torch thread in the driver: with its in-process trainer next to a rollout worker on 2
            # cores, the default (2) oversubscribes and the run takes twice as long.
            rc = main(["cluster=slurm", "cluster.partition=debug", "cluster.time=00:20:00",
                       f"cluster.ray_port={free_port()}", head_args, "+cluster.env.OMP_NUM_THREADS=1", *TINY,
                       f"hydra.run.dir={run_dir}", "--follow"])
            out = capsys.readouterr().out
            assert rc == 0, out[-3000:]
            print(f"slurm 2-step run: {time.monotonic() - t0:.0f} s", file=sys.stderr)
            job_id = next(ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("job id: "))
            assert f"job {job_id}: COMPLETED" in out and "rl.train exited with status 0" in out
            done = [ln for ln in slurm.jobcomp.read_text().splitlines() if f"JobId={job_id} " in ln]
            assert len(done) == 1 and "JobState=COMPLETED" in done[0] and "ExitCode=0:0" in done[0]
            manifest = _check_run(run_dir, job_id, "slurm")
            assert (run_dir / "submit.sbatch").read_text().startswith("#!/bin/bash")
            assert manifest["cluster"]["partition"] == "debug" and manifest["cluster"]["env"] == {"OMP_NUM_THREADS": "1"}
            assert main(["--logs", job_id, "cluster=slurm"]) == 0
            assert "rl.train exited with status 0" in capsys.readouterr().out
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ---- secrets ------------------------------------------------------------------------------------
SECRET = "s3cr3t-v4lue-91"


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text in p.read_text(errors="replace")]


def test_slurm_secrets_reach_the_job_but_no_file_or_output(in_tmp, capsys, monkeypatch):
    """A secret cluster.env value goes to sbatch's environment, never into submit.sbatch,
    the manifest, the train command or the dry-run output."""
    bin_dir = in_tmp / "bin"
    _fake_slurm(bin_dir, "debug")
    seen = in_tmp / "bin" / "sbatch_env"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nprintf %s "$WANDB_API_KEY" > {seen}\necho 7\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.defpath}")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    args = ["cluster=slurm", "cluster.partition=debug", "+experiment=math", f"+cluster.env.WANDB_API_KEY={SECRET}",
            "+cluster.env.HF_HOME=/h"]
    assert main([*args, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "export HF_HOME=/h" in out and "WANDB_API_KEY" in out
    run_dir = in_tmp / "run"
    assert main([*args, f"hydra.run.dir={run_dir}"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert seen.read_text() == SECRET  # the job gets it (sbatch --export=ALL)
    assert (run_dir / "submit.sbatch").exists() and _files_holding(run_dir, SECRET) == []


def test_ray_job_refuses_to_send_a_secret_to_the_head(in_tmp, capsys):
    rc = main(["cluster=ray_job", "cluster.address=http://127.0.0.1:1", "+experiment=math",
               f"+cluster.env.HF_TOKEN={SECRET}", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and SECRET not in err
    assert "cluster.env.HF_TOKEN" in err and "export it on the Ray cluster's nodes" in err
    assert list(in_tmp.iterdir()) == []


def test_train_takes_secrets_out_of_hydra(in_tmp, monkeypatch):
    """rl.train moves secret cluster.env overrides into its environment: the printed config and
    Hydra's files never see them; a failed config check leaves no outputs/ directory."""
    from rl.train import take_secret_env

    monkeypatch.delenv("MY_API_KEY", raising=False)
    assert take_secret_env(["seed=1", f"+cluster.env.MY_API_KEY={SECRET}", "+cluster.env.HOME_DIR=/x"]) == \
        ["seed=1", "+cluster.env.HOME_DIR=/x"]
    assert os.environ["MY_API_KEY"] == SECRET
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, "-m", "rl.train", "--cfg", "job", f"+cluster.env.WANDB_API_KEY={SECRET}"],
                         capture_output=True, text=True, env=env, cwd=in_tmp, timeout=120, check=False)
    assert res.returncode == 0 and "experiment" in res.stdout and SECRET not in res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "rl.train", f"+cluster.env.WANDB_API_KEY={SECRET}", "seed=-5",
                          "algorithm.group_size=0"], capture_output=True, text=True, env=env, cwd=in_tmp,
                         timeout=120, check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert SECRET not in res.stderr and not (in_tmp / "outputs").exists()


def test_a_broken_interpolation_is_one_line(in_tmp, capsys):
    assert main(["cluster=slurm", "rollout.max_new_tokens=${oops}", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "oops" in err and err.startswith("error: config error:")
