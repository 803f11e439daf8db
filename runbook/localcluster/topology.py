"""Where one isolated local lab lives: its loopback addresses, its nodes, and the
folder its pods work in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WORKERS = ("worker1", "worker2")
#: Every node kube-proxy runs on: the workers, and the untainted control plane, which
#: has the NodePorts but (nodeAffinity) no gateway pod: the node that shows whether
#: externalTrafficPolicy keeps a health check node-local.
NODES = (*WORKERS, "master1")


@dataclass(frozen=True, slots=True)
class Topology:
    """Loopback addresses of one isolated lab: 127.<30+index>.<role>.<n>."""

    index: int

    @property
    def net(self) -> str:
        if not 1 <= self.index <= 200:
            raise ValueError(f"lab index {self.index} must be 1..200")
        return f"127.{30 + self.index}"

    def node_ip(self, n: int) -> str:
        return f"{self.net}.0.{n}"

    def ip_of_node(self, node: str) -> str:
        """A node's address by name (NODES order: worker1 .0.1, worker2 .0.2, master1 .0.3)."""
        return self.node_ip(NODES.index(node) + 1)

    def node_at(self, ip: str | None) -> str | None:
        """The node whose address `ip` is, or None (HAProxy's own address, or none)."""
        return next((n for n in NODES if ip is not None and self.ip_of_node(n) == ip), None)

    @property
    def haproxy_ip(self) -> str:
        return f"{self.net}.0.100"

    def gateway_pod_ip(self, n: int) -> str:
        return f"{self.net}.1.{n}"

    def backend_pod_ip(self, n: int) -> str:
        return f"{self.net}.2.{n}"


def pods_dir(run_dir: Path) -> Path:
    """Where a run's pods work (their logs, the Envoy configs): every container and
    preStop hook of the run has it as its working directory."""
    return run_dir / "lab"
