"""Reading an HTTP answer's body as it arrives, under a speed floor.

``body_chunks`` yields what has arrived (so a trickle is measured as it
comes) and ends a body that crawls or goes silent with TooSlow;
``read_capped`` reads a small body (a manifest, a token, an error) no
further than a limit. Both check for trio cancellation between chunks.
Blocking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import requests
import urllib3

from providers.errors import BadImage
from providers.http_session import body_socket, redact
from providers.retry import SpeedFloor, TooSlow, checkpoint, seconds

BODY_CHUNK = 1 << 16


def body_chunks(
    response: requests.Response, floor: SpeedFloor, idle: float, *, decode: bool = False
) -> Iterator[bytes]:
    """The body of a streamed ``response`` in chunks as they arrive, under ``floor``.

    Raises TooSlow when the floor is not met or the body goes silent for
    ``idle`` seconds;
    urllib3 errors or OSError when the connection breaks. ``decode``
    undoes a Content-Encoding (never wanted for blobs: their digest is
    of the bytes as sent). Checks for cancellation between chunks.
    """
    floor.restart()
    sock = body_socket(response)
    if sock is not None:
        # The request's timeout was for waiting for the answer; the body's
        # silences are bounded by the floor's window instead.
        with contextlib.suppress(OSError):  # closed already: the read says so
            sock.settimeout(idle)
    while True:
        checkpoint()
        try:
            # read1: whatever has arrived, so a trickle is measured as it
            # comes instead of being waited for until a whole chunk fills.
            data = response.raw.read1(BODY_CHUNK, decode_content=decode)
        except urllib3.exceptions.ReadTimeoutError as exc:
            silent = f"registry sent nothing for {seconds(idle)} s"
            raise TooSlow(floor.message() if floor.enabled else silent) from exc
        if not data:
            return  # a body that ended is judged no more: it arrived
        floor.add(len(data))
        yield data


def read_capped(
    response: requests.Response, limit: int, chunks_in: Iterator[bytes]
) -> bytes | None:
    """The body of ``response`` as ``chunks_in`` gives it, or None once it passes ``limit`` bytes.

    ``chunks_in`` is ``body_chunks(response, ..., decode=True)``. Reads no
    further than the chunk that passes the limit and closes the response
    either way. Raises TooSlow,
    urllib3 errors or OSError when the body breaks off or crawls, and
    BadImage when it does not decode as its ``Content-Encoding`` says.
    """
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in chunks_in:
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
    except (urllib3.exceptions.DecodeError, requests.exceptions.ContentDecodingError) as exc:
        raise BadImage(
            f"{redact(response.url)}: the body does not decode as its Content-Encoding says: {exc}"
        ) from exc
    finally:
        response.close()
    return b"".join(chunks)
