"""kube-proxy's part of the local lab: EndpointSlice conditions and a NodePort with
externalTrafficPolicy: Local (see the package docstring for what is modelled)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING

from .kubelet import Pod

if TYPE_CHECKING:
    from .cluster import LabCluster


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
    """One node's NodePort: forwards to the node's own endpoints, or refuses."""

    def __init__(
        self, cluster: LabCluster, node: str, ip: str, node_port: int, target_port: int
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.ip = ip
        self.node_port = node_port
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.rr = 0

    def endpoints(self) -> list[Pod]:
        return local_endpoints([p for p in self.cluster.gateway_pods if p.node == self.node])

    async def reconcile(self) -> None:
        want_open = bool(self.endpoints())
        if want_open and self.server is None:
            self.server = await asyncio.start_server(
                self._accept, self.ip, self.node_port, reuse_address=True, backlog=1024
            )
            self.cluster.proxy_events.emit(
                "kube-proxy", "nodeport_open", node=self.node, port=self.node_port
            )
        elif not want_open and self.server is not None:
            self.server.close()  # new connections refused; established ones live on
            self.server = None
            self.cluster.proxy_events.emit(
                "kube-proxy", "nodeport_closed", node=self.node, port=self.node_port
            )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        eps = self.endpoints()
        if not eps:
            _reset(writer)
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

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


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
