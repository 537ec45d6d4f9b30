"""What the process that starts a lazy mount asks the daemon for while the mount process loads.

A mount process takes half a second to load its code and index its layers
before it reads anything; the process that starts it (``lazyfs.fs.mount``)
knows the layers already, and its daemon is up. So it asks, in this order:

- each eStargz layer's table of contents (``lazyfs.cache.tails``), which
  the mount reads first;
- the prefetch trace of the image and command (``lazyfs.blobs.trace_run``),
  when the cache or the store holds one: its ranges in trace order, as a
  replay, yielding to reads. The mount process is told so (``--trace-sent``)
  and only notes them. A trace says what this command reads, so
- without one, the program and what it loads, from published indexes
  (``lazyfs.fs.predict_published``). With one, that guess would only take
  the link from the replay: its asks are reads', which a replay yields to.

All of it is a hint: what is fetched is verified when read, and a failure
is logged, never the start's. Blocking.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lazyfs.cache.remote import RemoteOrigin
from providers.digest import Digest
from providers.manifest import Layer

if TYPE_CHECKING:
    from lazyfs.blobs.trace_run import TraceClient
    from lazyfs.index.trace import Trace
    from providers.source import BlobSource

    class _Client(TraceClient, BlobSource, Protocol):
        """The daemon's client (``lazyfs.cache.client.CacheClient``), as a replay uses it."""


log = logging.getLogger(__name__)


def find_trace(cache_dir: Path, store: Path, key: str) -> Trace | None:
    """The trace a mount of ``key`` would replay: the cache's, else one fetched into the store."""
    from lazyfs.blobs.trace_run import find_trace as find  # loaded by lazy mounts only

    return find(cache_dir, key, store)


def ask_ahead(
    cache_dir: Path,
    store: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    executable: Sequence[str],
    trace: Trace | None,
) -> None:
    """Ask the daemon of ``cache_dir`` for what a mount of ``layers`` reads first (module
    docstring); ``trace`` is ``find_trace``'s, and the mount process was told it is sent."""
    from lazyfs.cache.tails import ask_tails, hint_client

    ask_tails(cache_dir, store, layers, origins, toc_start)
    if trace is None:
        from lazyfs.fs.predict_published import ask_published_program

        ask_published_program(cache_dir, store, layers, origins, executable)
        return
    remote = [layer for layer in layers if layer.digest in origins]
    client = hint_client(cache_dir, remote, origins)
    try:
        send_trace(client, store / "layers", remote, trace)
    except Exception as error:  # a hint: the mount reads what it needs all the same
        log.info("the trace of %s was not sent: %s", trace.key, error)
    finally:
        client.close()


def send_trace(client: _Client, layers_dir: Path, layers: Sequence[Layer], trace: Trace) -> int:
    """Have ``client``'s daemon replay ``trace`` for a mount of ``layers``; chunks queued.

    As the mount would: its ranges of the layers and of the windows blobs of
    their published indexes kept under ``layers_dir``, and no others.
    """
    from lazyfs.blobs.published_ahead import read_windows_blobs
    from lazyfs.blobs.trace_run import replay_steps, send_steps

    read_windows_blobs(layers_dir, layers, client)
    steps = replay_steps(trace, {digest: blob.size for digest, blob in client.blobs.items()})
    queued = send_steps(client, steps)
    log.info("asked the replay of the trace of %s: %d chunks", trace.key, queued)
    return queued


def toc_start(tail: bytes, size: int) -> int | None:
    """Where the TOC member of the eStargz blob of ``size`` bytes ending in ``tail`` starts."""
    from lazyfs.index.estargz_footer import parse_footer

    footer = parse_footer(tail, size)
    return None if footer is None else footer.toc_offset
