"""A mount's end of the cache daemon's socket for the daemon's in-process tests: requests
sent as frames, answers read back, as plain as the protocol allows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from lazyfs.cache.framing import FrameDecoder, encode_frame
from lazyfs.cache.messages import Request, Response, decode_response, encode_request


class Client:
    """A mount's end of the socket, as plain as the protocol allows."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.pending: list[bytes] = []

    async def send(self, request: Request) -> None:
        await self.stream.send_all(encode_frame(encode_request(request)))

    async def receive(self) -> Response | None:
        """The next answer, or None when the daemon closed the connection."""
        while not self.pending:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self.pending.extend(self.decoder.feed(data))
        return decode_response(self.pending.pop(0))

    async def call(self, request: Request) -> Response | None:
        await self.send(request)
        return await self.receive()


@asynccontextmanager
async def connect(path: Path) -> AsyncIterator[Client]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        yield Client(stream)
