"""A TCP proxy on 127.0.0.1 that can cut the network the way a partition does: the client's
side goes silent (nothing is delivered, nothing is refused, sockets stay open) and the server
side notices only after `server_notices_after_s`, as PostgreSQL's keepalives would.

No firewall rules are needed, so tests can partition one process from PostgreSQL while the
others keep their direct connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


class PartitionProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self._partitioned = False
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="partition-proxy", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait(10)

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def partition(self, server_notices_after_s: float) -> None:
        """From now on nothing passes; the server's side is closed after the delay."""
        self._partitioned = True
        self.loop.call_soon_threadsafe(lambda: self.loop.call_later(server_notices_after_s, self._close_server_sides))

    def heal(self) -> None:
        """New connections pass again; the ones cut by the partition are closed."""
        def close_all() -> None:
            for client, server in list(self._links):
                client.close()
                if server is not None:
                    server.close()
            self._links.clear()
            self._partitioned = False

        self.loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _close_server_sides(self) -> None:
        for _client, server in list(self._links):
            if server is not None:
                server.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            await asyncio.start_server(self._handle, sock=self._sock)
            self._started.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._partitioned:  # accepted, then silence
            self._links.add((client_writer, None))
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        link = (client_writer, server_writer)
        self._links.add(link)
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer))
        self._links.discard(link)
        for writer in link:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self._partitioned:
                    continue  # dropped on the floor
                writer.write(data)
                await writer.drain()
        if not self._partitioned:
            with contextlib.suppress(OSError):
                writer.close()
