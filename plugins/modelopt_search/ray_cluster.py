"""The Ray cluster a search runs on (``modelopt optimize --ray [ADDRESS]``): connecting to
it with a typed error for a bad or silent address, its nodes and the worker slots they hold,
and the check that a SQLite study is shared only by nodes of this machine (else an RDB every
node reaches is needed). The trials themselves run in :mod:`.ray_search`."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import attrs

from .errors import SearchError
from .owner import boot_id
from .study import masked

__all__ = ["RayCluster", "check_storage", "connect"]

#: seconds the driver waits for every node to say which host it runs on
PLACE_S = 120.0


def _reachable(address: str) -> None:
    """A typed error naming ``address`` when nothing listens there (``ray.init`` would wait
    for minutes before failing)."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"optimize --ray: {address!r} is not a Ray cluster address; give "
                          "HOST:PORT of its head node (e.g. 10.0.0.5:6379, what `ray start "
                          "--head` prints), ray://HOST:10001, or no address for a local one.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise SearchError(f"optimize --ray: no Ray cluster answers at {address} ({e}); start "
                          "one there (`ray start --head`) or give its head node's address "
                          "(HOST:PORT).") from e


@attrs.define
class RayCluster:
    """The Ray cluster a search runs on: its address, and whether the search connected to it
    (then it disconnects at the end)."""

    address: str | None
    connected_here: bool
    ray: Any = attrs.field(repr=False)

    def close(self) -> None:
        if self.connected_here:
            self.ray.shutdown()

    def nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def hosts(self) -> list[tuple[str, str, str]]:
        """(node id, hostname, boot id) of every live node, each asked on the node itself."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self.ray.remote(num_cpus=0, max_retries=0)(_where)
        nodes = self.nodes()  # once: the answers are zipped with these very nodes
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote() for n in nodes]
        return [(n["NodeID"], *where) for n, where in
                zip(nodes, self.ray.get(refs, timeout=PLACE_S))]

    def slots(self, cpus: int, workers: int | None) -> list[str]:
        """The node of each worker slot: as many slots of ``cpus`` CPUs as each live node
        holds, round-robin over the nodes (the first ``workers`` of them, or more taken in
        turn when ``workers`` is larger)."""
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise SearchError(f"optimize: ray_workers must be an integer >= 1, got "
                              f"{workers!r}.")
        nodes = self.nodes()
        per = [[n["NodeID"]] * int(n.get("Resources", {}).get("CPU", 0) // cpus)
               for n in nodes]
        order = [ids[i] for i in range(max(map(len, per), default=0)) for ids in per
                 if i < len(ids)]
        if workers is not None:
            pick = order or [n["NodeID"] for n in nodes]
            order = [pick[i % len(pick)] for i in range(workers)]
        n = len(order)
        if n < 1:
            raise SearchError(f"optimize --ray: no node of the Ray cluster at "
                              f"{self.address or 'local'} has {cpus} CPU(s) free for a worker "
                              "(a worker takes the search's thread count); add nodes or "
                              "lower threads.")
        return order


def _where() -> tuple[str, str]:
    return socket.gethostname(), boot_id()


def connect(address: str | None) -> RayCluster:
    """Connect to the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else the cluster
    ``ray start`` runs on this machine, else a new local one); an existing connection of
    this process is used as it is."""
    try:
        import ray
    except ImportError as e:
        raise SearchError('optimize --ray needs Ray: pip install "modelopt-core[serve-ray]" '
                          "(or ray>=2.30).") from e
    if address and address not in ("auto", "local"):
        _reachable(address)
    if ray.is_initialized():
        return RayCluster(address, False, ray)
    try:
        ray.init(address=address or None, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SearchError(f"optimize --ray: cannot connect to the Ray cluster at "
                          f"{address or os.environ.get('RAY_ADDRESS') or 'local'} "
                          f"({type(e).__name__}: {str(e)[:300]}).") from e
    return RayCluster(address, True, ray)


def check_storage(cluster: RayCluster, storage: str, out: Path) -> bool:
    """Whether every node of the cluster runs on this machine. A SQLite study only then (the
    nodes see the file, and the host lock serializes the claims); else a typed error asking
    for an RDB."""
    here = (socket.gethostname(), boot_id())
    away = sorted({f"{h} ({nid[:8]})" for nid, h, boot in cluster.hosts() if (h, boot) != here})
    if away and storage.startswith("sqlite"):
        raise SearchError(
            f"optimize --ray: the study {masked(storage)} is a SQLite file, which only the "
            f"processes of one machine can share, and node(s) {away[:4]} of the Ray cluster "
            f"run on other machines than this one ({here[0]}). Give --storage "
            "postgresql://USER:PASSWORD@HOST/DB (a database every node reaches; storage= in "
            f"Python) for the study; {out} stays the output folder here.")
    return not away
