"""h2_short's HTTP/2 client against a real HTTP/2 server on loopback (python-hyper's h2
as the server, cleartext with prior knowledge) that ends streams each way a peer can:
each ending has its error kind and its `h2_error`, and a stream a GOAWAY left
unprocessed is sent again by the client's stack and counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from runbook.load import h2client
from runbook.load.records import RequestRecord

#: (the connection, the stream, which connection this is: 1, 2, ...) -> None
Behaviour = Callable[[h2.connection.H2Connection, int, int], None]


def answer(conn: h2.connection.H2Connection, stream_id: int, _n: int) -> None:
    conn.send_headers(stream_id, [(":status", "200"), ("content-length", "2")])
    conn.send_data(stream_id, b"ok", end_stream=True)


def refuse(conn: h2.connection.H2Connection, stream_id: int, _n: int) -> None:
    conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)


def reset_after_headers(conn: h2.connection.H2Connection, stream_id: int, _n: int) -> None:
    conn.send_headers(stream_id, [(":status", "200")])
    conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)


def goaway_mid_response(conn: h2.connection.H2Connection, stream_id: int, _n: int) -> None:
    conn.send_headers(stream_id, [(":status", "200")])
    conn.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=stream_id)


class GoawayAfterSecondStream:
    """The first connection answers its first two streams and, with the second, says
    by GOAWAY that it processed none after it (those it leaves alone); later
    connections answer."""

    def __init__(self) -> None:
        self.streams = 0

    def __call__(self, conn: h2.connection.H2Connection, stream_id: int, n: int) -> None:
        if n > 1:
            answer(conn, stream_id, n)
            return
        self.streams += 1
        if self.streams <= 2:
            answer(conn, stream_id, n)
        if self.streams == 2:
            conn.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=stream_id)


async def h2_server(behaviour: Behaviour) -> tuple[asyncio.Server, str]:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        n = connections
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65535):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        behaviour(conn, event.stream_id, n)
                writer.write(conn.data_to_send())
                await writer.drain()
                if conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def together(behaviour: Behaviour, count: int, warm: bool = False) -> list[RequestRecord]:
    """`count` requests at once on one client; `warm`: after one alone, which learns
    the server's SETTINGS (until then the client sends one stream at a time)."""
    server, url = await h2_server(behaviour)
    try:
        async with h2client.new_client(None, 5, 4.0) as client:
            if warm:
                first = RequestRecord(0, "t-0", "h2_short", "/", 0)
                assert (await h2client.fetch(client, url, first)).error is None
            return await asyncio.gather(
                *(
                    h2client.fetch(client, url, RequestRecord(i, f"t-{i}", "h2_short", "/", 0))
                    for i in range(1, count + 1)
                )
            )
    finally:
        server.close()


async def one(behaviour: Behaviour) -> RequestRecord:
    server, url = await h2_server(behaviour)
    try:
        async with h2client.new_client(None, 5, 4.0) as client:
            record = RequestRecord(1, "t-000001", "h2_short", "/", 0.0)
            return await h2client.fetch(client, url, record)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("behaviour", "error", "h2_error", "status"),
    [
        (answer, None, None, 200),
        # not processed: a refusal, as a refused connection is
        (refuse, "refused", "RST_STREAM REFUSED_STREAM", None),
        (reset_after_headers, "truncated", "RST_STREAM INTERNAL_ERROR", 200),
        (goaway_mid_response, "truncated", "GOAWAY NO_ERROR", 200),
    ],
)
def test_each_way_a_stream_ends(behaviour, error, h2_error, status) -> None:
    record = asyncio.run(one(behaviour))
    assert (record.error, record.h2_error, record.status) == (error, h2_error, status)
    assert record.end_ms is not None
    assert record.resent_by_stack == 0
    if error is None:
        assert record.bytes == 2 and record.first_byte_ms is not None
    else:
        assert record.detail


def test_a_stream_a_goaway_left_unprocessed_is_sent_again_and_counted() -> None:
    # the two after the first go out together on the connection
    records = asyncio.run(together(GoawayAfterSecondStream(), 2, warm=True))
    assert [(r.error, r.status) for r in records] == [(None, 200), (None, 200)]
    assert sorted(r.resent_by_stack for r in records) == [0, 1]


def test_a_refused_connection_is_refused() -> None:
    async def run() -> RequestRecord:
        server, url = await h2_server(answer)
        server.close()
        await server.wait_closed()
        async with h2client.new_client(None, 5, 4.0) as client:
            return await h2client.fetch(client, url, RequestRecord(1, "t-1", "h2_short", "/", 0.0))

    record = asyncio.run(run())
    assert record.error == "refused"
    assert record.h2_error is None


def test_streams_share_one_connection() -> None:
    """The class's point: many requests, one connection to the LB."""
    seen: set[int] = set()

    def counting(conn: h2.connection.H2Connection, stream_id: int, n: int) -> None:
        seen.add(n)
        answer(conn, stream_id, n)

    records = asyncio.run(together(counting, 20))
    assert [r.error for r in records] == [None] * 20
    assert seen == {1}
