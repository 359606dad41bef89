"""Starting or joining Ray, shared by `--with-ray` on the debug backbone and the verl backbone.

    with ray_session(runtime_env={"env_vars": {...}}) as info:
        ...   # info.connected_to_cluster: True when RAY_ADDRESS named a running cluster

With `RAY_ADDRESS` set (e.g. `ray://head:10001` or `head:6379` of a multi-node cluster started with
`ray start --head`), ajet joins that cluster; otherwise it starts a local one for this process.
Ctrl-C (or SIGTERM from a scheduler) leaves the session through `ray.shutdown()`, so a local cluster
does not outlive the run and a joined cluster only loses this driver, never its other jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ajet.processes import sigterm_as_interrupt

logger = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "RAY_ADDRESS"


@dataclass(frozen=True)
class RaySessionInfo:
    address: str | None  # the cluster joined, None for a local cluster started here
    started_here: bool  # False when Ray was already initialised by the caller (left running)

    @property
    def connected_to_cluster(self) -> bool:
        return self.address is not None


def ray_address_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The cluster to join: `RAY_ADDRESS` when set and not empty, else None (start a local one)."""
    value = (os.environ if environ is None else environ).get(RAY_ADDRESS_ENV, "").strip()
    return value or None


def ray_init_kwargs(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Arguments for `ray.init`: join `address` (or RAY_ADDRESS), else start a local cluster.

    Resource counts only apply to a local cluster: a joined cluster's resources were fixed by
    `ray start`, and Ray refuses num_cpus/num_gpus when connecting.
    """
    address = address or ray_address_from_env(environ)
    kwargs: dict[str, Any] = {}
    if address is not None:
        kwargs["address"] = address
    else:
        # Explicitly local: without this, a RAY_ADDRESS exported later by a child would not matter,
        # but an empty one in the environment would make ray.init() search for a cluster.
        kwargs["address"] = "local"
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        kwargs["include_dashboard"] = False
    if runtime_env:
        kwargs["runtime_env"] = dict(runtime_env)
    if namespace:
        kwargs["namespace"] = namespace
    return kwargs


def init_ray(**kwargs: Any) -> RaySessionInfo:
    """Start or join Ray (see `ray_init_kwargs` for the arguments); a no-op if already initialised."""
    import ray

    if ray.is_initialized():
        return RaySessionInfo(address=None, started_here=False)
    init_kwargs = ray_init_kwargs(**kwargs)
    address = init_kwargs["address"] if init_kwargs["address"] != "local" else None
    logger.info("ray: %s", f"joining the cluster at {address}" if address else "starting a local cluster")
    ray.init(**init_kwargs)
    return RaySessionInfo(address=address, started_here=True)


def shutdown_ray() -> None:
    """Disconnect this driver (and stop the cluster if it was started locally)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def ray_session(**kwargs: Any) -> Iterator[RaySessionInfo]:
    """Ray for the duration of the block, shut down however the block ends (Ctrl-C included).

    SIGTERM is turned into KeyboardInterrupt inside the block so that a cluster scheduler stopping
    the job takes the same clean path as Ctrl-C.
    """
    info = init_ray(**kwargs)
    try:
        with sigterm_as_interrupt():
            yield info
    except KeyboardInterrupt:
        logger.warning("interrupted: shutting down Ray")
        raise
    finally:
        if info.started_here:
            shutdown_ray()
