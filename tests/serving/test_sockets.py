"""The deployment server's listening socket: connections it accepts have Nagle's algorithm off.

With it on, a response written as headers then body waits for the client's delayed ACK
(about 40 ms on Linux) on every kept-alive connection. asyncio turns it off only for sockets
that say they are TCP, which the listener bound by hand has to say itself.
"""

from __future__ import annotations

import asyncio
import socket

from serving.server import bind_socket


def nodelay_of_accepted_connection(listener: socket.socket) -> int:
    async def accept_one() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        port = listener.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(accept_one())


def test_accepted_connections_have_nagle_off() -> None:
    assert nodelay_of_accepted_connection(bind_socket("127.0.0.1", 0)) != 0


def test_a_listener_that_does_not_say_tcp_would_leave_nagle_on() -> None:
    """The check above can fail: the socket module's default protocol (0) keeps Nagle on."""
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind(("127.0.0.1", 0))
    plain.listen(8)
    assert nodelay_of_accepted_connection(plain) == 0
