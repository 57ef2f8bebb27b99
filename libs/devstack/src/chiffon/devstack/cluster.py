"""A NATS JetStream cluster on one machine: N ``NatsServer`` nodes of the same binary,
each with its own client, monitoring and route ports and its own data folder.

Used by ``chiffon up --nats-nodes 3``, the cluster test and ``bench:events``::

    cluster = NatsCluster.on_free_ports(tmp / "nats", 3).start()
    ...  cluster.url ("nats://127.0.0.1:P0,nats://127.0.0.1:P1,...")
    cluster.nodes[1].kill(); cluster.nodes[1].start()   # a node lost, then back
    cluster.stop()

Node ``i`` listens on ``port + i`` (clients), ``monitor_port + i`` and ``route_port + i``
(the other nodes), and keeps its store in ``data_dir(i)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from chiffon.devstack.ports import free_ports
from chiffon.devstack.servers import ClusterRoutes, NatsServer, ServerError, tail

MAX_NODES = 5  # JetStream keeps at most 5 replicas of a stream


def cluster_nodes(
    size: int,
    data_dir: Callable[[int], Path],
    *,
    ports: Sequence[int],
    monitor_ports: Sequence[int],
    route_ports: Sequence[int],
    sync_interval: str = "2m",
    log_file: Callable[[int], Path] | None = None,
    name: str = "chiffon",
) -> list[NatsServer]:
    """The ``size`` nodes of one cluster, node ``i`` on the ``i``-th port of each list."""
    if not 1 < size <= MAX_NODES:
        raise ValueError(f"a cluster has 2 to {MAX_NODES} nodes, not {size}")
    if min(len(ports), len(monitor_ports), len(route_ports)) < size:
        raise ValueError(f"{size} nodes need {size} ports of each kind")
    return [
        NatsServer(
            data_dir(i),
            ports[i],
            monitor_ports[i],
            sync_interval,
            log_file=log_file(i) if log_file else None,
            server_name=f"{name}-{i}",
            cluster=ClusterRoutes(
                name,
                route_ports[i],
                tuple(route_ports[n] for n in range(size) if n != i),
            ),
        )
        for i in range(size)
    ]


class NatsCluster:
    """Start, stop and inspect the nodes of one cluster together."""

    def __init__(self, nodes: Sequence[NatsServer]) -> None:
        self.nodes = list(nodes)

    @classmethod
    def on_free_ports(cls, root: Path, size: int = 3, sync_interval: str = "2m") -> NatsCluster:
        """A cluster under ``root`` (``root/node-<i>``) on ports the kernel says are free."""
        ports = free_ports(3 * size)
        return cls(
            cluster_nodes(
                size,
                lambda i: root / f"node-{i}",
                ports=ports[:size],
                monitor_ports=ports[size : 2 * size],
                route_ports=ports[2 * size :],
                sync_interval=sync_interval,
            )
        )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what CHIFFON_NATS_URL takes."""
        return ",".join(self.urls)

    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node that is not running, all at once (a node waits for its
        peers to elect a JetStream meta leader), then wait until every node reports
        JetStream healthy. A no-op for nodes that already run."""
        missing = [node for node in self.nodes if not node.running()]
        for node in missing:
            node.require_free_ports()
        for node in missing:
            node.launch()
        deadline = time.monotonic() + timeout
        for node in missing:
            node.wait_accepting(max(1.0, deadline - time.monotonic()))
        self.wait_healthy(max(1.0, deadline - time.monotonic()))
        return self

    def wait_healthy(self, timeout: float) -> None:
        """Until every node's /healthz says JetStream is current (a meta leader is known
        and the node has caught up with it)."""
        deadline = time.monotonic() + timeout
        while True:
            sick = [node for node in self.nodes if not node.healthy()]
            if not sick:
                return
            if time.monotonic() > deadline:
                node = sick[0]
                raise ServerError(
                    f"NATS node {node.server_name} not healthy after {timeout:.0f}s; "
                    f"log {node.log_file}:\n{tail(node.log_file)}"
                )
            time.sleep(0.1)

    def running(self) -> list[NatsServer]:
        return [node for node in self.nodes if node.running()]

    def stop(self, timeout: float = 30.0) -> list[NatsServer]:
        """Stop every running node; returns those that were running."""
        return [node for node in self.nodes if node.stop(timeout)]

    def __repr__(self) -> str:
        return f"NatsCluster({self.url})"
