"""What the daemon answers on one connection when an answer cannot be sent as it is.

In process: a daemon's connection handler over an in-memory stream, as a mount's
client speaks to it. The daemon is every mount's on the machine: nothing one
request brings may end it.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from lazyfs.cache.daemon import Server
from lazyfs.cache.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from lazyfs.cache.messages import (
    MAX_STATUS_BLOBS,
    Response,
    decode_response,
    encode_request,
    encode_response,
    wire_text,
)
from lazyfs.cache.values import (
    BlobInfo,
    BlobKind,
    BlobRange,
    Failure,
    FailureKind,
    HandleOrigin,
    Origin,
    Read,
    Request,
    Status,
    StatusOk,
)
from providers.digest import Digest
from providers.errors import NotFound
from tests.support.cache_fetchers import fetcher_over

DIGEST = Digest("sha256:" + "5a" * 32)


def refused(origin: Origin) -> object:
    # A registry's JSON error message, as RegistryHttp quotes it: JSON may spell a
    # lone surrogate, which protobuf refuses to encode.
    raise NotFound(f"blob {DIGEST}: registry said: no such blob \ud800 here")


async def test_an_answer_protobuf_refuses_is_sent_escaped_and_the_daemon_goes_on(
    tmp_path: Path,
) -> None:
    async with fetcher_over(tmp_path, 1 << 16) as fetcher, trio.open_nursery() as nursery:
        server = Server(fetcher.cache, fetcher, refused)  # type: ignore[arg-type]
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(server.connection, theirs)
        decoder = FrameDecoder()

        async def ask(request: Request) -> Response:
            await ours.send_all(encode_frame(encode_request(request)))
            while True:
                frames = decoder.feed(await ours.receive_some(1 << 16))
                if frames:
                    return decode_response(frames[0])

        answer = await ask(Read(1, BlobRange(DIGEST, 0, 10), HandleOrigin("src")))
        assert isinstance(answer, Failure) and answer.kind is FailureKind.NOT_FOUND
        assert answer.reason.endswith("no such blob \\ud800 here")
        assert isinstance(await ask(Status(2)), StatusOk)
        await ours.aclose()
        nursery.cancel_scope.cancel()


def test_wire_text_cuts_bytes_and_writes_out_what_utf8_cannot_hold() -> None:
    assert wire_text("plain", 3) == "pla"
    assert wire_text("é\udcff", 10) == "é\\udcff"
    assert wire_text("x" * 5000, 1000) == "x" * 1000
    assert wire_text("漢字" * 100, 64).encode() == ("漢字" * 100).encode()[:63]  # whole characters
    assert len(wire_text("\ud800" * 100, 64).encode()) == 64


def test_a_status_of_the_most_blobs_with_the_longest_reasons_fits_one_frame() -> None:
    # A mount's first miss asks for a status: one too large to send made every miss EIO.
    digest = Digest("sha512:" + "ab" * 64)
    worst = BlobInfo(digest, BlobKind.QUARANTINED, 1 << 62, 1 << 62, "\ud800漢" * 1000)
    status = StatusOk(3, 1, 1, 1, 1, 1, 1, 1, 1, 1, (worst,) * MAX_STATUS_BLOBS, True)
    assert len(encode_frame(encode_response(status))) < DEFAULT_MAX_FRAME
