"""A real three-node Ray cluster on this machine for the multi-node tests.

``ray start`` three times with ``--node-ip-address=127.0.0.1``, each node with its own ports: a
head without work (``--num-cpus=0``; GCS, dashboard / Jobs API on 127.0.0.1) and two worker nodes
with their own CPUs (separate raylets and object stores). Ray 2.60 replaces a loopback node
address with the host's own address (``services.resolve_ip_for_localhost``), so the nodes register
as this machine's interface address: every process still runs here. Teardown stops only the processes this
fixture started (their sessions, by PID); never ``ray stop``, which stops every Ray process on
the machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _schedulers import VENV_BIN, _env, _kill_group, _wait, free_port


@dataclass
class Node:
    proc: subprocess.Popen
    """``ray start --block`` of this node (its own session)."""
    log: Path
    num_cpus: int

    def raylet_pid(self) -> int:
        """The PID of this node's raylet (a child of its ``ray start``)."""
        import psutil

        kids = psutil.Process(self.proc.pid).children(recursive=True)
        pids = [p.pid for p in kids if p.name() == "raylet"]
        if len(pids) != 1:
            raise RuntimeError(f"expected one raylet under PID {self.proc.pid}, found {pids}")
        return pids[0]


    def node_id(self) -> str:
        """This node's Ray node id (from its raylet's command line)."""
        import psutil

        args = psutil.Process(self.raylet_pid()).cmdline()
        return next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))


@dataclass
class Cluster:
    gcs: str
    """``127.0.0.1:PORT``: ``cluster.address`` / ``ray.init(address=...)``."""
    dashboard: str
    """``http://127.0.0.1:PORT``: the Jobs API (``cluster=ray_job``)."""
    temp_dir: Path
    head: Node
    workers: list[Node] = field(default_factory=list)

    def alive_nodes(self) -> list[dict]:
        """``[{"NodeID", "Alive", "Resources", ...}]`` from the dashboard's state API (no driver)."""
        with urllib.request.urlopen(f"{self.dashboard}/nodes?view=summary", timeout=5) as r:
            data = json.loads(r.read())
        return [n["raylet"] for n in data["data"]["summary"] if n["raylet"].get("state") == "ALIVE"]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([os.path.join(VENV_BIN, "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


@contextlib.contextmanager
def ray_cluster(worker_cpus: tuple[int, ...] = (2, 2), object_store_mb: int = 300,
                timeout_s: float = 120.0) -> Iterator[Cluster]:
    """Head (no CPUs) + one worker node per entry of ``worker_cpus``; yields once all are alive."""
    tmp = Path(tempfile.mkdtemp(prefix="rm", dir="/tmp"))  # short: Ray's unix sockets live here
    env = _env(RAY_AUTH_MODE="disabled")
    gcs, dash = free_port(), free_port()
    store = f"--object-store-memory={object_store_mb * 1024 * 1024}"
    nodes: list[Node] = []
    try:
        head = Node(_start(["--head", f"--port={gcs}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
                            f"--dashboard-agent-listen-port={free_port()}", store, f"--temp-dir={tmp}"],
                           tmp / "head.log", env), tmp / "head.log", 0)
        nodes.append(head)
        cluster = Cluster(gcs=f"127.0.0.1:{gcs}", dashboard=f"http://127.0.0.1:{dash}", temp_dir=tmp, head=head)

        def dashboard_up() -> bool:
            if head.proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited\n{head.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{cluster.dashboard}/api/version", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait("Ray head dashboard", dashboard_up, timeout_s, head.log)
        for i, cpus in enumerate(worker_cpus):  # one at a time: two joining at once timed out on 2 busy cores
            log = tmp / f"worker{i}.log"
            # Its own temp dir: nodes sharing the head's would share one runtime_resources/ tree, and a
            # worker node's runtime-env agent then replaced the job driver's working dir under it.
            node = Node(_start([f"--address={cluster.gcs}", f"--num-cpus={cpus}", store, f"--temp-dir={tmp}/w{i}",
                                f"--dashboard-agent-listen-port={free_port()}"], log, env), log, cpus)
            nodes.append(node)
            cluster.workers.append(node)

            def joined(want: int = i + 2, node: Node = node) -> bool:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"a worker node's ray start exited\n{node.log.read_text()[-3000:]}")
                try:
                    return len(cluster.alive_nodes()) == want
                except (OSError, KeyError, ValueError):
                    return False

            _wait(f"Ray worker node {i}", joined, timeout_s, log)
        yield cluster
    finally:
        for n in reversed(nodes):
            _kill_group(n.proc)
        shutil.rmtree(tmp, ignore_errors=True)
