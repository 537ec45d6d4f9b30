"""The registry puller's settings, as values: what the flags say, without the client.

Kept apart from ``providers.registry`` and ``providers.registry_http``
(which re-export them) so that whoever only builds settings (the CLI, for
an image from a directory, and the cache daemon before it fetches) loads
no HTTP library: ``requests`` alone costs a command a tenth of a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from providers.platforms import Platform
from providers.registry_auth import Credentials


@dataclass(frozen=True)
class HttpOptions:
    """How to talk to registries; the defaults suit a real network.

    ``timeout``: seconds from a request's first try to its answer's headers,
    retries included, and the longest a body may go silent when the speed
    floor is off. 30 s: a registry or CDN answers in well under a second, a
    TLS handshake over a poor mobile link in a few, and one that has said
    nothing for 30 s is not about to (the old 10 s connect and 60 s read
    timeouts, tried 5 times, held a pull on a silent server for 305 s).

    ``min_speed`` bytes/s over each ``min_speed_time`` seconds: the speed
    floor of bodies, as curl's --speed-limit/--speed-time and git's
    http.lowSpeedLimit/lowSpeedTime; 0 turns it off. 1 KiB/s is far below
    any working link (a 56k modem does 7 KiB/s) and far above a stuck one;
    30 s rides out TCP's retransmission backoff after a burst of loss
    (1 + 2 + 4 + 8 s), where a shorter window would cut a link that recovers.
    A blob cut for slowness resumes on a fresh connection, which cures a
    dead flow; a registry that is slow on every connection runs out of
    ``attempts``.

    ``blob_timeout``: seconds for one whole blob, resumes included; 0 (the
    default) is none, because a cap that suits a 10 MB layer cuts a 10 GB
    one on an honest link, and the floor already ends transfers that stop.
    """

    ca_file: str | None = None
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    attempts: int = 5
    backoff: float = 0.25
    max_backoff: float = 4.0
    timeout: float = 30.0
    min_speed: int = 1024
    min_speed_time: float = 30.0
    blob_timeout: float = 0.0


@dataclass(frozen=True)
class RegistryOptions:
    """What the flags say; ``registry`` serves docker.io references."""

    registry: str = "https://registry-1.docker.io"
    mirrors: tuple[str, ...] = ()
    insecure_registries: frozenset[str] = frozenset()
    platform: Platform | None = None
    http: HttpOptions = field(default_factory=HttpOptions)
