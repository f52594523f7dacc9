"""Real schedulers on loopback for the submission tests: a private Ray head, a one-node Slurm.

Both are context managers that start everything under a fresh short temporary directory with
their own ports, and stop only the processes they started (by PID / process group; never
``ray stop``, which would stop every Ray process on the machine).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    """This environment with the venv's bin first on PATH (jobs run `python`, `ray` from PATH)."""
    return {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""), **extra}


def _wait(what: str, ok, timeout_s: float, log: Path | None = None) -> None:
    end = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > end:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise TimeoutError(f"{what} not ready after {timeout_s:g} s\n{tail}")
        time.sleep(0.5)


def _kill_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process (its own session), then SIGKILL whatever is left of its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass
class RayHead:
    dashboard: str
    """Jobs API address, ``http://127.0.0.1:PORT``."""
    gcs: str
    temp_dir: Path


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout_s: float = 120.0) -> Iterator[RayHead]:
    """A Ray head on 127.0.0.1 with its own ports and temp dir (auth off), for job submission.

    Runs ``ray start --head --block`` in its own session; teardown SIGTERMs it (Ray then stops the
    node's processes) and SIGKILLs anything left in that session.
    """
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # short: Ray's unix sockets live here
    gcs, dash, client, agent = free_port(), free_port(), free_port(), free_port()
    log = tmp / "head.log"
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={tmp}"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(RAY_AUTH_MODE="disabled"),
                                start_new_session=True)
    url = f"http://127.0.0.1:{dash}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait("Ray head dashboard", up, timeout_s, log)
        yield RayHead(dashboard=url, gcs=f"127.0.0.1:{gcs}", temp_dir=tmp)
    finally:
        _kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Slurm:
    env: dict[str, str]
    """Environment for client commands (``SLURM_CONF``, PATH)."""
    jobcomp: Path
    """One line per finished job (``JobState=...``)."""
    dir: Path


SLURM_CONF = """\
ClusterName=dsatest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
ReturnToService=2
MailProg=/bin/true
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_cluster(cpus: int = 2, timeout_s: float = 30.0) -> Iterator[Slurm]:
    """munged + slurmctld + slurmd for one node (localhost) under a fresh temp dir (see machine.md)."""
    d = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))
    keydir, sockdir = d / "mk", d / "ms"
    keydir.mkdir(mode=0o700)
    sockdir.mkdir(mode=0o755)
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    d.chmod(0o755)
    key, sock = keydir / "munge.key", sockdir / "munge.sock"
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(ctld_port=free_port(), slurmd_port=free_port(), sock=sock, d=d, cpus=cpus))
    env = _env(SLURM_CONF=str(conf))
    pidfiles = [d / "slurmd.pid", d / "slurmctld.pid", keydir / "munged.pid"]
    try:
        subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
        key.chmod(0o600)
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={sock}",
                        f"--pid-file={keydir / 'munged.pid'}", f"--seed-file={keydir / 'munged.seed'}",
                        f"--log-file={keydir / 'munged.log'}"], check=True, capture_output=True)
        subprocess.run(["slurmctld", "-f", str(conf), "-i"], check=True, env=env, capture_output=True)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], check=True, env=env, capture_output=True)

        def idle() -> bool:
            res = subprocess.run(["sinfo", "-h", "-o", "%T"], check=False, env=env, capture_output=True, text=True)
            return res.stdout.strip() == "idle"

        _wait("Slurm node", idle, timeout_s, d / "slurmctld.log")
        yield Slurm(env=env, jobcomp=d / "jobcomp.txt", dir=d)
    finally:
        _slurm_down(env, pidfiles)
        shutil.rmtree(d, ignore_errors=True)


def _slurm_down(env: dict[str, str], pidfiles: list[Path], timeout_s: float = 60.0) -> None:
    """Cancel every job and wait for an empty queue, then stop slurmd, slurmctld, munged by PID."""
    def queue() -> list[str]:
        res = subprocess.run(["squeue", "-h", "-o", "%i"], check=False, env=env, capture_output=True, text=True)
        return res.stdout.split() if res.returncode == 0 else []

    jobs = queue()
    if jobs:
        subprocess.run(["scancel", *jobs], check=False, env=env, capture_output=True)
        with contextlib.suppress(TimeoutError):
            _wait("empty Slurm queue", lambda: not queue(), timeout_s)
    for pidfile in pidfiles:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 10
            while time.monotonic() < end:
                os.kill(pid, 0)  # raises once it is gone
                time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
