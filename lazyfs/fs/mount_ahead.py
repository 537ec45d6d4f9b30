"""What the process that starts a lazy mount asks the daemon for while the mount process loads.

A mount process takes half a second to load its code and index its layers
before it reads anything; the process that starts it (``lazyfs.fs.mount``)
knows the layers already, and its daemon is up. So it asks, in this order:

- when the cache or the store holds a prefetch trace of the image and
  command (``has_trace``; ``lazyfs.blobs.trace_run``), its first
  ``SENT_AHEAD`` requests, in trace order, as a replay that yields to
  reads. The mount process is told so (``--trace-sent``) and sends the
  rest, if any: this process may end as soon as the mount is up (``lazyfs
  mount``, ``provision``), and each request is a round trip to the daemon.
  Those first requests are lost if this process cannot send them (a daemon
  gone meanwhile): the mount does not know, and sends only the rest;
- each eStargz layer's table of contents (``lazyfs.cache.tails``), which
  the mount reads first (it waits for the tails to arrive; the trace goes
  first, so that its head is queued before the mount sends its rest);
- without a trace to replay (or one with nothing of these layers'), the
  program and what it loads, from published indexes
  (``lazyfs.fs.predict_published``). With one, that guess would only take
  the link from the replay: its asks are reads', which a replay yields to,
  and the trace says better what the command reads.

A provision that fetched the trace from the image's registry has sent its
head already, before this (``replay_early``); the daemon skips what it has
in hand when it comes again.

All of it is a hint: what is fetched is verified when read, and a failure
is logged (at INFO: this process's warnings reach the user's terminal, and
the mount process logs the same trouble with the trace in its own log),
never the start's. Blocking.
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
    from providers.source import BlobSource

    class _Client(TraceClient, BlobSource, Protocol):
        """The daemon's client (``lazyfs.cache.client.CacheClient``), as a replay uses it."""


log = logging.getLogger(__name__)

# How long an early replay waits for a daemon on its way: it loads in a few tenths of a
# second, and by then the mount has started and sends the trace itself.
DAEMON_WAIT = 2.0


def has_trace(cache_dir: Path, store: Path, key: str) -> bool:
    """Whether the cache or the store holds a trace of ``key`` (the places of
    ``lazyfs.index.trace.find_trace``), unread: the mount process is started before it is
    decoded."""
    from lazyfs.index.trace import TraceError, trace_path  # loaded by lazy mounts only

    try:
        return any(trace_path(folder, key).is_file() for folder in (cache_dir, store))
    except (TraceError, OSError):
        return False


def ask_ahead(
    cache_dir: Path,
    store: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    executable: Sequence[str],
    trace: str | None,
) -> None:
    """Ask the daemon of ``cache_dir`` for what a mount of ``layers`` reads first (module
    docstring); ``trace``: the key of the trace the mount process was told is sent."""
    from lazyfs.cache.tails import ask_tails, hint_client

    sent = False
    if trace is not None:
        # First: the mount process sends the rest of a long trace once it has loaded, and
        # the daemon queues a repository's replays in the order they come.
        remote = [layer for layer in layers if layer.digest in origins]
        client = hint_client(cache_dir, remote, origins)
        try:
            sent = send_trace(client, store, remote, trace)
        except Exception as error:  # a hint: the mount reads what it needs all the same
            log.info("the trace of %s was not sent: %s", trace, error)
            sent = True  # and the program not guessed at: the mount may replay the rest
        finally:
            client.close()
    ask_tails(cache_dir, store, layers, origins, toc_start)
    if not sent:
        from lazyfs.fs.predict_published import ask_published_program

        ask_published_program(cache_dir, store, layers, origins, executable)


def replay_early(
    cache_dir: Path,
    store: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    key: str,
) -> None:
    """``send_trace`` for the layers of ``layers`` in ``origins``, before the mount is
    started (``lazyfs.provision.lazy.ReplayAhead``); a failure logged at INFO. Nothing
    unless the daemon answers: one that never listened yet (``lazyfs.cli_early`` started
    it as the command began, and it loads) or that a start holds the start lock of is
    waited for, up to ``DAEMON_WAIT``; one gone with its socket left, which no one is
    starting (the mount starts another), is not, nor warned of."""
    from lazyfs.cache.spawn import answers_soon
    from lazyfs.cache.tails import hint_client

    remote = [layer for layer in layers if layer.digest in origins]
    if not remote or not has_trace(cache_dir, store, key):
        return
    if not answers_soon(cache_dir, DAEMON_WAIT):
        return
    client = hint_client(cache_dir, remote, origins)
    try:
        send_trace(client, store, remote, key)
    except Exception as error:  # a hint: the mount sends it again
        log.info("the trace of %s was not sent early: %s", key, error)
    finally:
        client.close()


def send_trace(client: _Client, store: Path, layers: Sequence[Layer], key: str) -> bool:
    """Have ``client``'s daemon replay the first ``SENT_AHEAD`` requests of the trace of
    ``key`` for a mount of ``layers`` (in the store at ``store``); whether it has any.

    As the mount reads it (``lazyfs.fs.mount_layers``): the trace
    ``find_trace`` finds in the cache and the store; the ranges of the
    layers, and no others. Then the
    windows of their published indexes kept in the store that the replay
    needs, as the mount asks for them once it has opened the layers
    (``lazyfs.blobs.published_asks.ask_replayed_windows``).
    """
    from lazyfs.blobs.published_asks import ask_replayed_windows
    from lazyfs.blobs.trace_run import SENT_AHEAD, client_steps, replayed_sizes, send_steps
    from lazyfs.index.trace import find_trace

    sizes = replayed_sizes(client)
    found = find_trace(client.cache_dir, key, store, sizes, level=logging.INFO)
    if found is None:
        return False
    steps = client_steps(client, found)
    client.replaying = steps  # its partial chunks are asked as pieces, as the mount asks them
    queued = send_steps(client, steps[:SENT_AHEAD], level=logging.INFO)
    log.info("asked the replay of the trace of %s: %d chunks or pieces queued", key, queued)
    ask_replayed_windows(client, store / "layers", layers, steps)
    return bool(steps)


def toc_start(tail: bytes, size: int) -> int | None:
    """Where the TOC member of the eStargz blob of ``size`` bytes ending in ``tail`` starts."""
    from lazyfs.index.estargz_footer import parse_footer

    footer = parse_footer(tail, size)
    return None if footer is None else footer.toc_offset
