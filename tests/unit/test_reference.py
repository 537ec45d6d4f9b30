"""providers.reference: tables of valid and invalid references, and properties."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from providers.digest import Digest
from providers.errors import BadImage, InvalidReference
from providers.reference import Reference, parse_reference

SHA256 = "sha256:" + "0123456789abcdef" * 4
SHA512 = "sha512:" + "fedcba9876543210" * 8


# (input, canonical str, familiar)
VALID = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/busybox:1", "docker.io/library/busybox:1", "busybox:1"),
    ("docker.io/library/busybox:1", "docker.io/library/busybox:1", "busybox:1"),
    ("foo/bar:1", "docker.io/foo/bar:1", "foo/bar:1"),
    ("foo/bar/baz", "docker.io/foo/bar/baz:latest", "foo/bar/baz:latest"),
    # Dropping "library/" here would name docker.io/foo/bar instead.
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    ("localhost/foo", "localhost/foo:latest", "localhost/foo:latest"),
    ("localhost:5000/foo/bar:v1", "localhost:5000/foo/bar:v1", "localhost:5000/foo/bar:v1"),
    # Without a "/" the part after ":" is a tag, never a port, as in Docker.
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),
    ("localhost", "docker.io/library/localhost:latest", "localhost:latest"),
    ("example.com/foo", "example.com/foo:latest", "example.com/foo:latest"),
    ("example.com:443/a/b:c", "example.com:443/a/b:c", "example.com:443/a/b:c"),
    ("127.0.0.1:5000/foo", "127.0.0.1:5000/foo:latest", "127.0.0.1:5000/foo:latest"),
    ("registry:5000/foo", "registry:5000/foo:latest", "registry:5000/foo:latest"),
    ("[::1]:5000/foo", "[::1]:5000/foo:latest", "[::1]:5000/foo:latest"),
    ("[2001:db8::1]/foo:t", "[2001:db8::1]/foo:t", "[2001:db8::1]/foo:t"),
    ("Example.COM/foo", "Example.COM/foo:latest", "Example.COM/foo:latest"),
    # An uppercase first part cannot be a namespace, so Docker takes it as a host.
    ("Foo/bar", "Foo/bar:latest", "Foo/bar:latest"),
    ("my-registry.example.com:5000/ns/img:tag", "my-registry.example.com:5000/ns/img:tag", None),
    ("a/b.c_d__e-f--g", "docker.io/a/b.c_d__e-f--g:latest", "a/b.c_d__e-f--g:latest"),
    # Docker shortens this to foo.bar/app, which parses as registry foo.bar.
    ("docker.io/foo.bar/app", "docker.io/foo.bar/app:latest", "docker.io/foo.bar/app:latest"),
    ("docker.io/localhost/app", "docker.io/localhost/app:latest", "docker.io/localhost/app:latest"),
    ("docker.io/library/a.b", "docker.io/library/a.b:latest", "a.b:latest"),
    ("0", "docker.io/library/0:latest", "0:latest"),
    ("foo:_Tag.1-x", "docker.io/library/foo:_Tag.1-x", "foo:_Tag.1-x"),
    ("foo:" + "t" * 128, "docker.io/library/foo:" + "t" * 128, "foo:" + "t" * 128),
    ("busybox@" + SHA256, "docker.io/library/busybox@" + SHA256, "busybox@" + SHA256),
    ("busybox:1@" + SHA256, "docker.io/library/busybox:1@" + SHA256, "busybox:1@" + SHA256),
    ("ex.com/a@" + SHA512, "ex.com/a@" + SHA512, "ex.com/a@" + SHA512),
    ("a" * 63, f"docker.io/library/{'a' * 63}:latest", f"{'a' * 63}:latest"),
    # 255 characters of normalized name: the longest allowed.
    ("ex.com/" + "a" * 248, "ex.com/" + "a" * 248 + ":latest", None),
]


@pytest.mark.parametrize(("text", "canonical", "familiar"), VALID)
def test_valid(text: str, canonical: str, familiar: str | None) -> None:
    reference = parse_reference(text)
    assert str(reference) == canonical
    if familiar is not None:
        assert reference.familiar == familiar
    assert parse_reference(canonical) == reference
    assert parse_reference(reference.familiar) == reference


# (input, a piece of the reason)
INVALID = [
    ("", "empty reference"),
    (":tag", "empty name"),
    ("@" + SHA256, "empty name"),
    ("busybox:", "empty tag"),
    ("busybox@", "empty digest"),
    ("foo/bar:tag@", "empty digest"),
    ("Busybox", "must be lowercase"),
    ("foo/Bar", "must be lowercase"),
    ("localhost:5000/Foo", "must be lowercase"),
    ("busybox:-tag", "bad tag"),
    ("busybox:.tag", "bad tag"),
    ("busybox:tag!", "bad tag"),
    ("busybox:latest ", "bad tag"),
    ("busybox:täg", "bad tag"),
    ("busybox:" + "t" * 129, "longer than 128"),
    ("busybox@sha256:abc", "bad digest"),
    ("busybox@md5:" + "0" * 32, "bad digest"),
    ("busybox@sha256:" + "A" * 64, "bad digest"),
    ("busybox@sha512:" + "0" * 64, "bad digest"),
    (f"busybox@{SHA256}@x", "bad digest"),
    ("foo@bar:baz", "bad digest"),
    ("localhost:port/foo", "bad port"),
    ("localhost:/foo", "bad port"),
    ("localhost:99999/foo", "bad port"),
    ("localhost:0/foo", "bad port"),
    ("example.com:5000:1/foo", "bad port"),
    ("[::1]:x/foo", "bad port"),
    ("-example.com/foo", "invalid host"),
    ("exa_mple.com/foo", "invalid host"),
    # The first part has a ".", so it is a host, and "_" is no host character.
    ("a.b_c/g", "invalid host"),
    ("example..com/foo", "invalid host"),
    (":5000/foo", "empty host"),
    ("[::1/foo", "unclosed '['"),
    ("[zz::1]/foo", "invalid IPv6"),
    ("[1:2:3]/foo", "invalid IPv6"),
    ("[::1]x/foo", "after ']'"),
    ("foo//bar", "empty path component"),
    ("foo/", "empty path component"),
    ("/foo", "empty path component"),
    ("foo bar", "invalid character ' '"),
    ("foo$bar", "invalid character '$'"),
    ("busybóx", "invalid character 'ó'"),
    ("foo\x00", "invalid character"),
    ("foo:bar:baz", "invalid character ':'"),
    ("foo/-bar", "invalid repository component '-bar'"),
    ("foo/bar-", "invalid repository component"),
    ("foo/a..b", "invalid repository component"),
    ("foo/a___b", "invalid repository component"),
    ("foo/.a", "invalid repository component"),
    ("a" * 238, "name too long"),
    ("example.com/" + "a" * 244, "name too long (256 characters, at most 255)"),
    ("0123456789abcdef" * 4, "image ID"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    assert caught.value.reference == text
    assert reason in caught.value.reason
    assert isinstance(caught.value, BadImage)
    assert repr(text) in str(caught.value)


def test_fields_and_properties() -> None:
    reference = parse_reference("localhost:5000/ns/app:2@" + SHA256)
    assert reference == Reference("localhost:5000", "ns/app", "2", Digest(SHA256))
    assert reference.name == "localhost:5000/ns/app"
    # The digest pins the content; the tag beside it only informs.
    assert reference.tag_or_digest == SHA256
    assert parse_reference("busybox").tag_or_digest == "latest"
    assert parse_reference("busybox@" + SHA256).tag is None


def test_reference_is_a_frozen_value() -> None:
    reference = parse_reference("busybox")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reference.tag = "1"  # type: ignore[misc]
    assert {reference, parse_reference("docker.io/library/busybox:latest")} == {reference}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (("docker.io", "busybox", "latest", None), "needs a namespace"),
        (("index.docker.io", "library/busybox", "latest", None), "use 'docker.io'"),
        (("docker.io", "library/busybox", None, None), "neither tag nor digest"),
        (("docker.io", "library/Busybox", "latest", None), "must be lowercase"),
        (("docker.io", "library/busybox", "-x", None), "bad tag"),
        (("docker.io", "library/busybox", None, "sha256:0"), "bad digest"),
        (("", "foo", "latest", None), "empty registry"),
        (("registry", "foo", "latest", None), "would read as part of the repository"),
        (("a b", "foo", "latest", None), "invalid host"),
    ],
)
def test_constructor_refuses_what_parsing_would_not_produce(
    fields: tuple[str, str, str | None, str | None], reason: str
) -> None:
    registry, repository, tag, digest = fields
    with pytest.raises(InvalidReference, match=re.escape(reason)):
        Reference(registry, repository, tag, Digest(digest) if digest else None)


# Properties: generated valid references, and arbitrary text.

_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
_port = st.integers(min_value=1, max_value=65535).map(lambda port: f":{port}")
_ipv6 = (
    st.ip_addresses(v=6)
    .map(str)
    .filter(lambda host: set(host) <= set("0123456789abcdef:"))
    .map(lambda host: f"[{host}]")
)
_registry = st.one_of(
    st.none(),
    st.sampled_from(["docker.io", "index.docker.io"]),
    st.builds(lambda port: "localhost" + port, st.one_of(st.just(""), _port)),
    st.builds(
        lambda labels, port: ".".join(labels) + port,
        st.lists(_label, min_size=2, max_size=4),
        st.one_of(st.just(""), _port),
    ),
    st.builds(lambda label, port: label + port, _label, _port),
    st.builds(lambda host, port: host + port, _ipv6, st.one_of(st.just(""), _port)),
)
_component = st.from_regex(r"[a-z0-9]{1,8}((\.|_|__|-+)[a-z0-9]{1,8}){0,3}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_digest = st.one_of(st.none(), _hex.map(lambda hex_: Digest("sha256:" + hex_)))


@given(
    registry=_registry,
    components=st.lists(_component, min_size=1, max_size=4),
    tag=st.one_of(st.none(), _tag),
    digest=_digest,
)
def test_generated_references_parse_and_round_trip(
    registry: str | None, components: list[str], tag: str | None, digest: Digest | None
) -> None:
    repository = "/".join(components)
    if registry is None:
        # A first part with a "." would be read as a host: that is another test.
        assume(len(components) == 1 or "." not in components[0])
        text = repository
    else:
        text = f"{registry}/{repository}"
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"

    expected_registry = registry or "docker.io"
    if expected_registry == "index.docker.io":
        expected_registry = "docker.io"
    if expected_registry == "docker.io" and len(components) == 1:
        repository = "library/" + repository
    assume(len(f"{expected_registry}/{repository}") <= 255)

    reference = parse_reference(text)
    assert reference == Reference(
        expected_registry,
        repository,
        "latest" if tag is None and digest is None else tag,
        digest,
    )
    assert parse_reference(str(reference)) == reference
    assert parse_reference(reference.familiar) == reference


def _parse_or_none(text: str) -> Reference | None:
    try:
        return parse_reference(text)
    except InvalidReference as error:
        assert error.reference == text
        assert error.reason
        return None


@given(st.text())
def test_arbitrary_text_parses_or_raises_invalid_reference(text: str) -> None:
    reference = _parse_or_none(text)
    if reference is not None:
        assert parse_reference(str(reference)) == reference


# Text from the characters references are made of finds the edge cases that
# arbitrary Unicode rarely hits.
@given(st.text(alphabet="abAB09._-/:@[]", max_size=40))
def test_reference_like_text_parses_or_raises_invalid_reference(text: str) -> None:
    reference = _parse_or_none(text)
    if reference is not None:
        assert parse_reference(str(reference)) == reference
        assert parse_reference(reference.familiar) == reference
