"""Length-prefixed frames: encoding, incremental decoding, limits, any split of the stream."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.cache.framing import FrameDecoder, FrameError, encode_frame


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize(
    ("payload", "wire"),
    [
        (b"", b"\x00\x00\x00\x00"),
        (b"a", b"\x00\x00\x00\x01a"),
        (b"x" * 258, b"\x00\x00\x01\x02" + b"x" * 258),
    ],
)
def test_encode_puts_the_big_endian_length_first(payload: bytes, wire: bytes) -> None:
    assert encode_frame(payload) == wire


def test_encode_refuses_a_payload_over_the_limit() -> None:
    assert encode_frame(b"x" * 8, max_frame=8) == frame(b"x" * 8)
    with pytest.raises(FrameError, match="9 bytes exceeds the limit of 8"):
        encode_frame(b"x" * 9, max_frame=8)


@pytest.mark.parametrize(
    ("pieces", "frames", "pending"),
    [
        ([b""], [[]], 0),
        ([frame(b"")], [[b""]], 0),
        ([frame(b"abc")], [[b"abc"]], 0),
        # Header cut in two, then payload in two.
        ([b"\x00\x00", b"\x00\x03a", b"bc"], [[], [], [b"abc"]], 0),
        # Two frames and the start of a third in one piece.
        ([frame(b"a") + frame(b"bb") + b"\x00\x00\x00\x02c"], [[b"a", b"bb"]], 5),
        ([frame(b"a") + b"\x00", b"\x00\x00\x00" + frame(b"z")], [[b"a"], [b"", b"z"]], 0),
        # Only part of a header.
        ([b"\x00\x00\x00"], [[]], 3),
    ],
)
def test_decoder_table(pieces: list[bytes], frames: list[list[bytes]], pending: int) -> None:
    decoder = FrameDecoder()
    assert [decoder.feed(piece) for piece in pieces] == frames
    assert decoder.pending == pending


def test_oversized_header_fails_before_its_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame=16)
    assert decoder.feed(frame(b"x" * 16)) == [b"x" * 16]
    with pytest.raises(FrameError, match="frame of 17 bytes; the limit is 16"):
        decoder.feed(b"\x00\x00\x00\x11")
    # Out of step for good: even a valid frame is refused now.
    with pytest.raises(FrameError):
        decoder.feed(frame(b"ok"))
    with pytest.raises(FrameError):
        decoder.eof()


def test_frames_before_a_bad_header_are_returned_then_the_error() -> None:
    decoder = FrameDecoder(max_frame=4)
    assert decoder.feed(frame(b"ok") + b"\xff\xff\xff\xff") == [b"ok"]
    with pytest.raises(FrameError):
        decoder.feed(b"")


def test_a_header_announcing_4_gib_is_refused_without_allocating() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="4294967295 bytes"):
        decoder.feed(b"\xff\xff\xff\xff")
    assert decoder.pending == 0


@pytest.mark.parametrize(
    ("stream", "ok"),
    [(b"", True), (frame(b"abc"), True), (b"\x00\x00", False), (frame(b"abc")[:-1], False)],
)
def test_eof_tells_a_clean_end_from_a_cut_frame(stream: bytes, ok: bool) -> None:
    decoder = FrameDecoder()
    decoder.feed(stream)
    if ok:
        decoder.eof()
    else:
        with pytest.raises(FrameError, match="stream ended inside a frame"):
            decoder.eof()


def test_max_frame_must_fit_the_header() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=1 << 32)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


payloads = st.lists(st.binary(max_size=40), max_size=12)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


@given(payloads, cuts)
def test_any_split_of_a_stream_decodes_the_same_frames(
    messages: list[bytes], where: list[int]
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    got = [f for piece in split(stream, where) for f in decoder.feed(piece)]
    assert got == messages
    assert decoder.pending == 0
    decoder.eof()


@given(payloads, st.binary(min_size=1, max_size=40), cuts)
def test_any_split_yields_the_frames_before_an_oversized_one_then_fails(
    messages: list[bytes], big: bytes, where: list[int]
) -> None:
    limit = len(big) - 1
    messages = [m[:limit] for m in messages]
    stream = b"".join(encode_frame(m) for m in messages) + frame(big) + frame(b"")
    decoder = FrameDecoder(max_frame=limit)
    got: list[bytes] = []
    with pytest.raises(FrameError):
        for piece in [*split(stream, where), b""]:
            got.extend(decoder.feed(piece))
    assert got == messages


@given(payloads, st.integers(min_value=1, max_value=len(frame(b"tail")) - 1), cuts)
def test_a_stream_cut_inside_a_frame_is_reported_at_eof(
    messages: list[bytes], missing: int, where: list[int]
) -> None:
    stream = b"".join(encode_frame(m) for m in [*messages, b"tail"])[:-missing]
    decoder = FrameDecoder()
    got = [f for piece in split(stream, where) for f in decoder.feed(piece)]
    assert got == messages
    with pytest.raises(FrameError, match="stream ended inside a frame"):
        decoder.eof()
