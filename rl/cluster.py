"""Joining Ray: fail fast on an unreachable head, or start a local cluster (the one place a run
initialises Ray). Light: no torch, so ``rl.submit`` can check an address in milliseconds."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from rl.config import StartupError, TrainConfig


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast when a ``host:port`` Ray address (any scheme) does not accept connections.

    ``ray.init`` itself waits minutes for an unreachable head; ``auto`` is left to Ray.
    """
    if address == "auto":
        return
    hostport = urlparse(address if "://" in address else f"ray://{address}").netloc
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StartupError(f"cluster.address={address!r}: expected HOST:PORT (or ray://HOST:PORT, "
                           "http://HOST:8265 for ray_job, or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise StartupError(f"cluster.address={address!r}: nothing answers at {host}:{port} ({err.strerror or err}); "
                           "start a head with `ray start --head` or unset cluster.address for a local cluster"
                           ) from err


def init_ray(cfg: TrainConfig) -> bool:
    """Connect to (or start) Ray; returns True when this call started a local cluster."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if cfg.cluster.kind == "ray_job":  # inside a Ray job: join the job's cluster (Ray sets RAY_ADDRESS)
        address = os.environ.get("RAY_ADDRESS") or "auto"
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.cluster.num_cpus, include_dashboard=False, log_to_driver=False)
        return not address
    except Exception as err:  # ConnectionError, TimeoutError, RuntimeError... depending on the address form
        raise StartupError(f"cluster.address={address!r}: could not connect to Ray ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); start a head with "
                           "`ray start --head` or unset cluster.address for a local cluster") from err
