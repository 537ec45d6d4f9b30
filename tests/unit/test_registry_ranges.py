"""The pure parts of registry range reads: answers to Range requests, storage URL expiry,
the cache of redirects, and streaming from any blob source."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.digest import Digest
from providers.errors import BadImage
from providers.registry_checks import parse_content_range, range_answer
from providers.registry_range import HOLD_FIRST, HOLD_MAX, MirrorHolds
from providers.registry_redirects import (
    DEFAULT_LIFETIME,
    EXPIRY_MARGIN,
    RedirectCache,
    url_expiry,
    usable_until,
)
from providers.source import stream_range
from tests.support.fakes import FakeSource

T2024 = datetime(2024, 1, 31, 12, 0, 0, tzinfo=UTC).timestamp()
S3 = "https://bucket.s3.amazonaws.com/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256"
GCS = "https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256"


@pytest.mark.parametrize(
    ("url", "expiry"),
    [
        (f"{S3}&X-Amz-Date=20240131T120000Z&X-Amz-Expires=1200&X-Amz-Signature=ab", T2024 + 1200),
        (f"{S3}&x-amz-date=20240131T120000Z&x-amz-expires=60", T2024 + 60),  # case
        (f"{GCS}&X-Goog-Date=20240131T120000Z&X-Goog-Expires=900", T2024 + 900),
        (f"https://cdn.example/blob?Expires={int(T2024)}&Signature=x", T2024),
        ("https://a.blob.core.windows.net/c/b?sv=2022&se=2024-01-31T12%3A00%3A00Z&sig=x", T2024),
        ("https://a.blob.core.windows.net/c/b?se=2024-01-31T12:00:00Z", None),  # se without sig
        ("https://cdn.example/blob?verify=1706702400-abc", None),  # a form we do not know
        ("https://cdn.example/blob", None),
        (f"{S3}&X-Amz-Date=yesterday&X-Amz-Expires=60", None),
        (f"{S3}&X-Amz-Date=20240131T120000Z&X-Amz-Expires=-5", None),
        (f"{S3}&X-Amz-Date=20240131T120000Z", None),  # half of it
        ("https://cdn.example/blob?Expires=soon", None),
    ],
)
def test_url_expiry(url: str, expiry: float | None) -> None:
    assert url_expiry(url) == expiry


def test_usable_until() -> None:
    signed = f"{S3}&X-Amz-Date=20240131T120000Z&X-Amz-Expires=3600"
    assert usable_until(signed, T2024) == T2024 + 3600 - EXPIRY_MARGIN
    # Little life left: half of it, so it does not die in flight.
    assert usable_until(signed, T2024 + 3580) == T2024 + 3590
    assert usable_until(signed, T2024 + 4000) == T2024 + 4000  # expired: not again
    assert usable_until("https://cdn.example/blob", T2024) == T2024 + DEFAULT_LIFETIME


class Clock:
    def __init__(self) -> None:
        self.now = T2024

    def __call__(self) -> float:
        return self.now


def test_redirect_cache_keeps_a_url_until_it_expires() -> None:
    clock = Clock()
    cache = RedirectCache(clock)
    cache.put("reg/a", "https://cdn.example/a")
    cache.put("reg/b", f"{S3}&X-Amz-Date=20240131T120000Z&X-Amz-Expires=600")
    clock.now += DEFAULT_LIFETIME - 1
    assert cache.get("reg/a") == "https://cdn.example/a"
    clock.now += 1
    assert cache.get("reg/a") is None
    assert cache.get("reg/b") is not None
    clock.now = T2024 + 600 - EXPIRY_MARGIN
    assert cache.get("reg/b") is None
    assert cache.get("reg/c") is None


def test_redirect_cache_skips_urls_already_expired() -> None:
    cache = RedirectCache(Clock())
    cache.put("reg/a", f"{S3}&X-Amz-Date=20200101T000000Z&X-Amz-Expires=60")
    assert cache.get("reg/a") is None


def test_redirect_cache_drop_keeps_a_newer_url() -> None:
    cache = RedirectCache(Clock())
    cache.put("reg/a", "https://cdn.example/old")
    cache.put("reg/a", "https://cdn.example/new")
    cache.drop("reg/a", "https://cdn.example/old")  # a late refusal of the old one
    assert cache.get("reg/a") == "https://cdn.example/new"
    cache.drop("reg/a", "https://cdn.example/new")
    assert cache.get("reg/a") is None


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("bytes 0-99/1000", (0, 99, 1000)),
        ("bytes 100-199/*", (100, 199, None)),
        (" bytes 5-5/6 ", (5, 5, 6)),
        ("bytes */1000", None),
        ("bytes 1-2", None),
        ("items 0-1/2", None),
        ("bytes 0-99/1000, bytes 200-299/1000", None),
        ("", None),
    ],
)
def test_parse_content_range(header: str, parsed: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(header) == parsed


@pytest.mark.parametrize(
    ("status", "content_range", "length", "start"),
    [
        (206, "bytes 100-199/1000", "100", 100),
        (206, "bytes 100-199/*", None, 100),
        (200, None, "1000", 0),
        (200, None, None, 0),  # chunked: the blob's size bounds it
    ],
)
def test_range_answer_accepts(
    status: int, content_range: str | None, length: str | None, start: int
) -> None:
    assert range_answer(status, content_range, length, 100, 199, 1000) == start


@pytest.mark.parametrize(
    ("status", "content_range", "length"),
    [
        (206, "bytes 0-99/1000", "100"),
        (206, "bytes 100-198/1000", "99"),
        (206, "bytes 100-200/1000", "101"),
        (206, "bytes 100-199/1001", "100"),
        (206, None, "100"),
        (206, "bytes */1000", None),
        (200, None, "999"),  # not the whole blob
        (204, None, None),
    ],
)
def test_range_answer_refuses(status: int, content_range: str | None, length: str | None) -> None:
    with pytest.raises(BadImage, match=r"to Range: bytes=100-199"):
        range_answer(status, content_range, length, 100, 199, 1000)


@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(1, 20_000),
)
def test_range_answer_takes_a_206_only_for_the_range_asked(
    first: int, span: int, got_first: int, got_span: int, extra: int
) -> None:
    last, got_last, size = first + span, got_first + got_span, first + span + extra
    header = f"bytes {got_first}-{got_last}/{size}"
    if (got_first, got_last) == (first, last):
        assert range_answer(206, header, None, first, last, size) == first
    else:
        with pytest.raises(BadImage):
            range_answer(206, header, None, first, last, size)


def test_stream_range_of_a_source_without_streaming() -> None:
    fake = FakeSource()
    image = fake.add_image("fake/image:1", [b"0123456789"], None)
    digest = Digest(image.layers[0].digest)
    assert list(stream_range(fake, digest, 3, 4)) == [(3, b"3456")]
    assert list(stream_range(fake, digest, 8, 100)) == [(8, b"89")]
    assert list(stream_range(fake, digest, 10, 5)) == []
    with pytest.raises(ValueError):
        stream_range(fake, digest, -1, 5)


def test_mirror_holds_double_while_a_mirror_fails_and_end_when_it_serves() -> None:
    now = [0.0]
    holds = MirrorHolds(clock=lambda: now[0])
    url = "http://mirror.test/v2/app/blobs/sha256:" + "a" * 64
    assert not holds.held(url) and url not in holds
    assert holds.failed(url) == HOLD_FIRST
    assert holds.held(url) and not holds.held(url.replace("a" * 64, "b" * 64))
    now[0] = 10.0
    assert holds.failed(url) == HOLD_FIRST - 10  # failed at once with the first: one failure
    now[0] = HOLD_FIRST
    assert not holds.held(url)  # asked first again: it fails again, held twice as long
    assert holds.failed(url) == 2 * HOLD_FIRST
    now[0] += 2 * HOLD_FIRST - 1
    assert holds.held(url)
    for _ in range(10):
        now[0] += HOLD_MAX
        last = holds.failed(url)
    assert last == HOLD_MAX
    now[0] += 2 * HOLD_MAX  # its last hold ended long ago: as if it had never failed
    assert holds.failed(url) == HOLD_FIRST
    holds.served(url)
    assert not holds.held(url) and url not in holds
    assert holds.failed(url) == HOLD_FIRST
