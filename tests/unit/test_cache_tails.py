"""The eStargz tails a mount will read first are asked of the daemon by the one who mounts."""

from __future__ import annotations

from pathlib import Path

from lazyfs.cache import tails
from lazyfs.cache.remote import RemoteOrigin
from lazyfs.cache.tails import TOCS_DIR, ask_tails, tail_layers
from providers.digest import Digest
from providers.manifest import Layer

TOC = ("containerd.io/snapshot/stargz/toc.digest", "sha256:" + "0" * 64)
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ORIGIN = RemoteOrigin("registry.example", "some/image")


def _layer(n: int, *, toc: bool = True, size: int = 5 << 20) -> Layer:
    return Layer(Digest("sha256:" + f"{n:02x}" * 32), GZIP, size, annotations=(TOC,) if toc else ())


def test_only_remote_estargz_layers_not_indexed_here_before(tmp_path: Path) -> None:
    estargz, gzip, local, indexed, empty = (
        _layer(1), _layer(2, toc=False), _layer(3), _layer(4), _layer(5, size=0)
    )  # fmt: skip
    origins = {layer.digest: ORIGIN for layer in (estargz, gzip, indexed, empty)}
    (tmp_path / "layers" / indexed.digest.removeprefix("sha256:") / TOCS_DIR).mkdir(parents=True)
    layers = [estargz, gzip, local, indexed, empty]
    assert tail_layers(tmp_path, layers, origins) == [estargz]


def test_no_daemon_is_no_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    layer = _layer(1)
    # No daemon listens: a hint, not raised; the mount waits for the daemon itself.
    assert ask_tails(cache, tmp_path, [layer], {layer.digest: ORIGIN}) == 0


def test_the_tail_asked_ahead_is_the_one_the_index_reads_where_it_keeps_it() -> None:
    """The cache package loads no index code, so it repeats two of its values."""
    from lazyfs.index import estargz_footer, estargz_store

    assert tails.TAIL_SIZE == estargz_footer.SUGGESTED_TAIL_SIZE
    assert tails.TOCS_DIR == estargz_store.TOCS_DIR


class _Client:
    """The two calls ``_ask_members`` makes of a cache client: a tail read, a prefetch."""

    def __init__(self, tails: dict[Digest, bytes]) -> None:
        self.tails = tails
        self.asked: list[tuple[Digest, int, int]] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return self.tails[digest]

    def prefetch(self, digest: Digest, offset: int, length: int) -> int:
        self.asked.append((digest, offset, length))
        return 1


def test_toc_members_before_the_tails_are_asked_for_bounded() -> None:
    small, big, huge, lying, odd = (_layer(n, size=100 << 20) for n in range(1, 6))
    starts = {small: (100 << 20) - 1000, big: (100 << 20) - (300 << 10), huge: 0,
              lying: -5, odd: None}  # fmt: skip
    client = _Client({layer.digest: layer.digest.encode() for layer in starts})
    by_tail = {layer.digest.encode(): start for layer, start in starts.items()}

    queued = tails._ask_members(client, list(starts), lambda tail, size: by_tail[tail])  # type: ignore[arg-type]

    tail_start = (100 << 20) - tails.TAIL_SIZE
    assert queued == 1
    # A footer is image content: a member past the bound is left to the mount (which refuses
    # it unread), one inside the tail or nowhere is asked for by nobody.
    assert client.asked == [
        (big.digest, (100 << 20) - (300 << 10), tail_start - ((100 << 20) - (300 << 10))),
    ]


def test_a_footer_that_cannot_be_read_ends_the_asks_quietly() -> None:
    first, second = _layer(1), _layer(2)
    client = _Client({first.digest: b"x", second.digest: b"y"})

    def refuse(tail: bytes, size: int) -> int | None:
        raise ValueError("no footer")

    assert tails._ask_members(client, [first, second], refuse) == 0  # type: ignore[arg-type]
    assert client.asked == []
