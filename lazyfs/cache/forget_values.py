"""A Forget request and its answer as values (``ForgetRequest`` in ``cache.proto``).

Beside ``values``, not in it: ``messages`` adds them to its ``Request`` and
``Response`` and turns them into protobuf and back with ``forget_pb`` and
``forget_of``. What a forget does is ``lazyfs.cache.forget``'s to say.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazyfs.cache import cache_pb2 as pb
from providers.digest import Digest

# Blobs one request names: a prune's layers go in as many requests as they need.
MAX_FORGET = 1024


@dataclass(frozen=True)
class Forget:
    """Drop what the cache holds of ``digests``: the layers they are were removed."""

    id: int
    digests: tuple[Digest, ...]


@dataclass(frozen=True)
class ForgetOk:
    id: int
    chunks: int  # chunks and pieces dropped
    freed: int  # bytes of the cache's disk: the chunk files in whole blocks (du, on most)


def forget_pb(request: Forget) -> pb.ForgetRequest:
    return pb.ForgetRequest(digests=list(request.digests))


def forget_ok_pb(response: ForgetOk) -> pb.ForgetReply:
    return pb.ForgetReply(chunks=response.chunks, bytes=response.freed)
