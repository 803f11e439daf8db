"""kube-proxy's part of the local lab: EndpointSlice conditions and a NodePort with
externalTrafficPolicy: Local (see the package docstring for what is modelled)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

from ..artifacts.events import EventLog
from .kubelet import Pod


def endpoint_conditions(pod: Pod) -> dict[str, bool]:
    """EndpointSlice conditions for one pod."""
    ready = pod.ready
    return {
        "ready": ready and not pod.terminating,
        "serving": ready,
        "terminating": pod.terminating,
    }


def local_endpoints(pods: list[Pod]) -> list[Pod]:
    """externalTrafficPolicy: Local: ready pods, else serving-and-terminating (KEP-1669)."""
    alive = [p for p in pods if not p.terminated.is_set()]
    ready = [p for p in alive if endpoint_conditions(p)["ready"]]
    if ready:
        return ready
    return [p for p in alive if endpoint_conditions(p)["serving"]]


class NodePort:
    """One node's NodePort with externalTrafficPolicy: Local, as kube-proxy programs it.

    - Traffic from elsewhere goes to the node's own endpoints (`local_endpoints`); with
      none it is dropped: kube-proxy's rule for a Local service without local endpoints
      is a DROP, so the client times out rather than being refused. Here the
      connection is accepted and never answered (a real drop would not even complete
      the TCP handshake; the client's view, a timeout, is the same).
    - Traffic that starts on the node itself (source address = the node's) goes to any
      ready endpoint in the cluster: kube-proxy routes LOCAL-source traffic through the
      service's cluster-wide chain whatever the policy (pkg/proxy/iptables/proxier.go,
      "route LOCAL traffic ... to external destinations"). The lab's HAProxy sits on
      worker1 as the homelab's does (its `source` is worker1's address): what it sends
      to worker1's NodePort, checks included, may reach worker2's gateway, and it never
      sees worker1's own gateway go away there (hence the victim is worker2's).
    """

    def __init__(
        self,
        node: str,
        ip: str,
        node_port: int,
        target_port: int,
        endpoints: Callable[[], list[Pod]],
        traffic_policy: str,
        events: EventLog,
    ) -> None:
        """`endpoints`: the service's pods (the EndpointSlices kube-proxy watches);
        `traffic_policy`: its externalTrafficPolicy; `events`: kube-proxy.jsonl."""
        self.service_pods = endpoints
        self.traffic_policy = traffic_policy
        self.events = events
        self.node = node
        self.ip = ip
        self.node_port = node_port
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.has_local: bool | None = None
        self.held: set[asyncio.StreamWriter] = set()
        self.rr = 0

    def endpoints(self) -> list[Pod]:
        return local_endpoints([p for p in self.service_pods() if p.node == self.node])

    def cluster_endpoints(self) -> list[Pod]:
        return [
            p
            for p in self.service_pods()
            if not p.terminated.is_set() and endpoint_conditions(p)["ready"]
        ]

    def endpoints_for(self, source_ip: str | None) -> list[Pod]:
        # externalTrafficPolicy: Cluster sends every node's traffic to any ready
        # endpoint (with SNAT): a node without a gateway pod answers as if it had one
        if source_ip == self.ip or self.traffic_policy != "Local":
            return self.cluster_endpoints()
        return self.endpoints()

    async def reconcile(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(
                self._accept, self.ip, self.node_port, reuse_address=True, backlog=1024
            )
        has_local = bool(self.endpoints_for(None))
        if has_local != self.has_local:
            self.has_local = has_local
            # "closed": new connections from elsewhere are dropped; established ones
            # live on (conntrack)
            kind = "nodeport_open" if has_local else "nodeport_closed"
            self.events.emit("kube-proxy", kind, node=self.node, port=self.node_port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        eps = self.endpoints_for(peer[0] if peer else None)
        if not eps:
            await self._drop(reader, writer)
            return
        pod = eps[self.rr % len(eps)]
        self.rr += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(pod.ip, self.target_port)
        except OSError:
            _reset(writer)
            return
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )

    async def _drop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Never answer; let go when the client does (or the lab stops)."""
        self.held.add(writer)
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            self.held.discard(writer)
            writer.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.held):
            writer.transport.abort()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, as a reset propagates through kube-proxy's DNAT."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionResetError, BrokenPipeError):
        _reset(writer)
    except OSError:
        writer.transport.abort()
