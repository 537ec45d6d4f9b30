"""The daemon's messages: typed values round-trip, bad requests are named, errors are mapped."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.cache import cache_pb2 as pb
from lazyfs.cache.framing import ProtocolError
from lazyfs.cache.messages import (
    MAX_PREFETCH_RANGES,
    MAX_READ_LENGTH,
    Background,
    BackgroundOk,
    BadRequest,
    BlobInfo,
    BlobKind,
    BlobRange,
    Evict,
    EvictOk,
    Extent,
    Failure,
    FailureKind,
    Forget,
    ForgetOk,
    HandleOrigin,
    Prefetch,
    PrefetchOk,
    Read,
    ReadOk,
    RegistryOrigin,
    Request,
    Response,
    Status,
    StatusOk,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    failure_kind,
)
from providers.digest import Digest
from providers.errors import (
    BadImage,
    DigestMismatch,
    NotFound,
    TemporaryFailure,
    Unauthorized,
)

BLOB = Digest("sha256:" + "ab" * 32)
REGISTRY = RegistryOrigin("registry.example:5000", "library/debian")

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
ids = u64
digests = st.builds(
    lambda algo, hexchars: Digest(f"{algo}:{hexchars}"),
    st.just("sha256"),
    st.text("0123456789abcdef", min_size=64, max_size=64),
) | st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: Digest(f"sha512:{h}"))
ranges = st.builds(BlobRange, digests, u64, st.integers(min_value=0, max_value=MAX_READ_LENGTH))
names = st.text(min_size=1, max_size=30)
origins = st.builds(RegistryOrigin, names, names) | st.builds(HandleOrigin, names)
requests: st.SearchStrategy[Request] = st.one_of(
    st.builds(Read, ids, ranges, origins, st.none() | u64, st.booleans(), st.booleans()),
    st.builds(Prefetch, ids, st.lists(ranges, max_size=5).map(tuple), origins, st.none() | u64,
              st.booleans(), st.booleans()),
    st.builds(Status, ids),
    st.builds(Evict, ids, ranges, st.text(max_size=40)),
    st.builds(Background, ids, digests, origins, u64.filter(bool), st.none() | digests,
              st.text(max_size=40)),
    st.builds(Forget, ids, st.lists(digests, min_size=1, max_size=5).map(tuple)),
)  # fmt: skip
# A reason of at most 16 characters is at most 64 bytes: what the wire keeps (MAX_BLOB_REASON).
blob_infos = st.builds(BlobInfo, digests, st.sampled_from(BlobKind), u64, u64, st.text(max_size=16))
extents = st.builds(Extent, st.text(max_size=40), u64, u64, u64)
responses: st.SearchStrategy[Response] = st.one_of(
    st.builds(ReadOk, ids, st.lists(extents, max_size=5).map(tuple), st.none() | st.binary()),
    st.builds(PrefetchOk, ids, u64),
    st.builds(
        StatusOk,
        ids,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        st.lists(blob_infos, max_size=4).map(tuple),
        st.booleans(),
        u64,
    ),
    st.builds(EvictOk, ids, u64),
    st.builds(BackgroundOk, ids, blob_infos),
    st.builds(ForgetOk, ids, u64, u64),
    st.builds(Failure, ids, st.sampled_from(FailureKind), st.text(max_size=60)),
)


@given(requests)
def test_requests_round_trip(request: Request) -> None:
    assert decode_request(encode_request(request)) == request


@given(responses)
def test_responses_round_trip(response: Response) -> None:
    assert decode_response(encode_response(response)) == response


def test_a_read_with_size_zero_keeps_it_apart_from_no_size() -> None:
    read = Read(1, BlobRange(BLOB, 0, 0), REGISTRY, blob_size=0)
    assert decode_request(encode_request(read)).blob_size == 0  # type: ignore[union-attr]
    assert decode_request(encode_request(Read(1, read.range, REGISTRY))).blob_size is None  # type: ignore[union-attr]


def read_message(**changes: object) -> pb.Request:
    message = pb.Request(id=7)
    message.read.range.CopyFrom(pb.BlobRange(digest=BLOB, offset=0, length=10))
    message.read.origin.CopyFrom(pb.Origin(handle="store"))
    for path, value in changes.items():
        target = message.read
        *parents, name = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        if value is None:
            target.ClearField(name)
        else:
            setattr(target, name, value)
    return message


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (pb.Request(id=3), "request 3: request without a body"),
        (read_message(range=None), "request 7: read request without a range"),
        (read_message(origin=None), "request 7: request without an origin"),
        (read_message(range__digest="sha256:abc"), "invalid blob digest 'sha256:abc'"),
        (read_message(range__digest=""), "invalid blob digest ''"),
        (read_message(range__digest="md5:" + "0" * 32), "invalid blob digest"),
        (read_message(range__length=MAX_READ_LENGTH + 1), f"the limit is {MAX_READ_LENGTH}"),
        (read_message(origin__handle=""), "request 7: empty origin handle"),
        (
            pb.Request(
                id=9,
                read=pb.ReadRequest(range=pb.BlobRange(digest=BLOB), origin=pb.Origin(handle="")),
            ),
            "request 9: empty origin handle",
        ),
        (
            pb.Request(
                id=4,
                read=pb.ReadRequest(
                    range=pb.BlobRange(digest=BLOB),
                    origin=pb.Origin(registry=pb.RegistryBlob(host="r.example")),
                ),
            ),
            "request 4: registry origin without a host or repository",
        ),
        (
            pb.Request(
                id=5,
                prefetch=pb.PrefetchRequest(
                    ranges=[pb.BlobRange(digest=BLOB)] * (MAX_PREFETCH_RANGES + 1),
                    origin=pb.Origin(handle="h"),
                ),
            ),
            f"prefetch of {MAX_PREFETCH_RANGES + 1} ranges",
        ),
        (pb.Request(id=6, prefetch=pb.PrefetchRequest()), "request 6: request without an origin"),
        (pb.Request(id=8, evict=pb.EvictRequest()), "request 8: evict request without a range"),
        (
            pb.Request(id=10, background=pb.BackgroundRequest(digest="x", blob_size=1)),
            "request 10: invalid blob digest 'x'",
        ),
        (
            pb.Request(id=11, background=pb.BackgroundRequest(
                digest=BLOB, blob_size=1, diff_id="sha256:0", origin=pb.Origin(handle="h"))),
            "request 11: invalid diff_id digest 'sha256:0'",
        ),
        (
            pb.Request(id=12, background=pb.BackgroundRequest(
                digest=BLOB, origin=pb.Origin(handle="h"))),
            "request 12: background fetch without the blob's size",
        ),
    ],
)  # fmt: skip
def test_bad_requests_are_named_with_their_id(message: pb.Request, reason: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(reason)) as info:
        decode_request(message.SerializeToString())
    assert info.value.request_id == message.id


def test_a_valid_read_decodes() -> None:
    assert decode_request(read_message().SerializeToString()) == Read(
        7, BlobRange(BLOB, 0, 10), HandleOrigin("store")
    )


@pytest.mark.parametrize("payload", [b"\xff", b"\x0a\x05ab", b"\x08"])
def test_undecodable_payloads_are_bad_requests_without_an_id(payload: bytes) -> None:
    with pytest.raises(BadRequest, match="undecodable request") as info:
        decode_request(payload)
    assert info.value.request_id is None


@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_request_or_a_bad_request(payload: bytes) -> None:
    try:
        request = decode_request(payload)
    except BadRequest:
        return
    # What decodes is a checked value: it encodes again to the same meaning.
    assert decode_request(encode_request(request)) == request


@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_response_or_a_protocol_error(payload: bytes) -> None:
    # Anything else (IndexError, a protobuf internal error) fails the test.
    with contextlib.suppress(ProtocolError):
        decode_response(payload)


def test_an_unknown_error_kind_reads_as_a_plain_failure() -> None:
    message = pb.Response(id=2)
    message.error.kind = 99  # type: ignore[assignment]
    message.error.reason = "newer daemon"
    assert decode_response(message.SerializeToString()) == Failure(
        2, FailureKind.FAILED, "newer daemon"
    )


def test_a_response_without_a_body_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="response 4 without a body"):
        decode_response(pb.Response(id=4).SerializeToString())


def test_an_empty_read_answer_is_a_read_answer() -> None:
    assert decode_response(encode_response(ReadOk(1, ()))) == ReadOk(1, ())


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (BadRequest("x", 1), FailureKind.BAD_REQUEST),
        (NotFound("blob"), FailureKind.NOT_FOUND),
        (Unauthorized("no"), FailureKind.UNAUTHORIZED),
        (DigestMismatch("chunk", expected="a", actual="b"), FailureKind.DIGEST_MISMATCH),
        (TemporaryFailure("503"), FailureKind.TEMPORARY),
        (BadImage("broken"), FailureKind.FAILED),
        (OSError("disk"), FailureKind.FAILED),
        (KeyError("x"), FailureKind.FAILED),
    ],
)
def test_failure_kinds(error: BaseException, kind: FailureKind) -> None:
    assert failure_kind(error) is kind


def test_failure_kinds_cover_the_wire_enum() -> None:
    assert {k.value for k in FailureKind} == set(pb.Error.Kind.values())
