"""Docker image references, parsed and normalized the way Docker does it.

Grammar (Docker's distribution/reference, with lazyfs' digest rules)::

    reference   := name [":" tag] ["@" digest]
    name        := [registry "/"] repository
    registry    := host [":" port]
    host        := domain-name | "[" IPv6 "]"
    repository  := component ("/" component)*
    component   := [a-z0-9]+ (separator [a-z0-9]+)*
    separator   := "." | "_" | "__" | "-"+
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := what providers.digest.parse_digest accepts

Normalization, as ``docker pull`` does it: the first "/"-separated part of
the name is a registry only when it contains "." or ":", is "localhost", or
holds an uppercase letter (repositories are lowercase, so that part can only
be a host); otherwise the registry is docker.io. "index.docker.io" is
docker.io. A one-component repository on docker.io gets "library/". A
reference with neither tag nor digest gets the tag "latest".

Pure: no I/O, so it is tested table-driven and with Hypothesis.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from providers.digest import Digest, parse_digest
from providers.errors import BadImage, InvalidReference

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
OFFICIAL_NAMESPACE = "library"
# Docker Hub's old name; Docker rewrites it to DEFAULT_REGISTRY.
LEGACY_REGISTRY = "index.docker.io"
NAME_MAX = 255
TAG_MAX = 128

_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_REPOSITORY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")
# Spelled out rather than \w: Python's \w matches Unicode letters, Go's does not.
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DOMAIN_COMPONENT_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:")
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")


class _Invalid(Exception):
    """Internal: a reason, turned into InvalidReference with the input text."""


@dataclass(frozen=True)
class Reference:
    """A normalized Docker image reference.

    Every instance is canonical: ``parse_reference(str(ref)) == ref``.
    Constructing one directly validates the fields and raises
    InvalidReference for anything ``parse_reference`` would not produce
    (a non-canonical Docker Hub name, neither tag nor digest, ...).
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: Digest | None = None

    def __post_init__(self) -> None:
        try:
            _check_registry(self.registry)
            if self.registry == LEGACY_REGISTRY:
                raise _Invalid(f"use {DEFAULT_REGISTRY!r}, not {LEGACY_REGISTRY!r}")
            _check_repository(self.repository)
            if self.registry == DEFAULT_REGISTRY and "/" not in self.repository:
                raise _Invalid(
                    f"a Docker Hub repository needs a namespace "
                    f"({OFFICIAL_NAMESPACE}/{self.repository})"
                )
            if _split_registry(self.name) != (self.registry, self.repository):
                raise _Invalid(
                    f"registry {self.registry!r} would read as part of the repository "
                    "(a registry has a '.', a ':' or an uppercase letter, or is 'localhost')"
                )
            _check_name_length(self.name)
            if self.tag is not None:
                _check_tag(self.tag)
            if self.digest is not None:
                _check_digest(self.digest)
            if self.tag is None and self.digest is None:
                raise _Invalid("neither tag nor digest")
        except _Invalid as error:
            raise InvalidReference(_compose(self), str(error)) from None

    @property
    def name(self) -> str:
        """``registry/repository``: what a registry and a store key by."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """The short form a user would type: ``busybox:latest``, ``foo/bar:1``.

        Parsing it gives this reference back. Docker's own short form drops
        "docker.io/" from docker.io/foo.bar/app, which then reads as registry
        foo.bar; here the registry stays wherever dropping it would do that.
        """
        candidates = [self.name]
        if self.registry == DEFAULT_REGISTRY:
            candidates.insert(0, self.repository)
            namespace, _, rest = self.repository.partition("/")
            if namespace == OFFICIAL_NAMESPACE:
                candidates.insert(0, rest)
        name = next(
            text for text in candidates if _split_registry(text) == (self.registry, self.repository)
        )
        return _with_tag_and_digest(name, self.tag, self.digest)

    @property
    def tag_or_digest(self) -> str:
        """What to ask a registry's manifest endpoint for.

        The digest when there is one (it pins the content; a tag given with
        it is only informative, as in Docker), else the tag.
        """
        if self.digest is not None:
            return self.digest
        # __post_init__ guarantees one of the two.
        assert self.tag is not None
        return self.tag

    def __str__(self) -> str:
        return _compose(self)


def parse_reference(text: str) -> Reference:
    """Parse and normalize ``text``; raise InvalidReference naming what is wrong."""
    try:
        registry, repository, tag, digest = _split(text)
    except _Invalid as error:
        raise InvalidReference(text, str(error)) from None
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def _split(text: str) -> tuple[str, str, str | None, Digest | None]:
    if not text:
        raise _Invalid("empty reference")
    if _IMAGE_ID_RE.fullmatch(text):
        # Docker refuses these so that an image ID is never taken for a name.
        raise _Invalid("a 64-character hexadecimal string is an image ID, not a name")

    rest, at, digest_text = text.partition("@")
    digest = None
    if at:
        if not digest_text:
            raise _Invalid("empty digest after '@'")
        digest = _check_digest(digest_text)

    # A ":" after the last "/" starts the tag; one before it is a port.
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1 :]
        if not tag:
            raise _Invalid("empty tag after ':'")
        _check_tag(tag)
    if not name:
        raise _Invalid("empty name")

    registry, repository = _split_registry(name)
    _check_registry(registry)
    if any("A" <= char <= "Z" for char in repository):
        raise _Invalid("repository name must be lowercase")
    _check_repository(repository)
    _check_name_length(f"{registry}/{repository}")
    return registry, repository, tag, digest


def _split_registry(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == LEGACY_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"{OFFICIAL_NAMESPACE}/{repository}"
    return registry, repository


def _check_registry(registry: str) -> None:
    if not registry:
        raise _Invalid("empty registry")
    if registry.startswith("["):
        close = registry.find("]")
        if close < 0:
            raise _Invalid(f"registry {registry!r}: unclosed '[' in IPv6 address")
        host, port = registry[1:close], registry[close + 1 :]
        if not host or not set(host) <= _IPV6_CHARS:
            raise _Invalid(f"registry {registry!r}: invalid IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"registry {registry!r}: invalid IPv6 address") from None
        if port:
            if not port.startswith(":"):
                raise _Invalid(f"registry {registry!r}: unexpected text after ']'")
            _check_port(registry, port[1:])
        return
    host, colon, port = registry.partition(":")
    if colon:
        _check_port(registry, port)
    if not host:
        raise _Invalid(f"registry {registry!r}: empty host")
    for component in host.split("."):
        if not _DOMAIN_COMPONENT_RE.fullmatch(component):
            raise _Invalid(
                f"registry {registry!r}: invalid host (letters, digits and inner '-' between dots)"
            )


def _check_port(registry: str, port: str) -> None:
    # Docker accepts any digits; a port past 65535 cannot be dialled, so it is
    # refused here rather than at connect time.
    if not port.isascii() or not port.isdigit() or not 0 < int(port) <= 65535:
        raise _Invalid(f"registry {registry!r}: bad port {port!r}")


def _check_repository(repository: str) -> None:
    if not repository:
        raise _Invalid("empty repository")
    for char in repository:
        if char not in _REPOSITORY_CHARS:
            if "A" <= char <= "Z":
                raise _Invalid("repository name must be lowercase")
            raise _Invalid(f"invalid character {char!r} in repository")
    for component in repository.split("/"):
        if not component:
            raise _Invalid(f"empty path component in repository {repository!r}")
        if not _COMPONENT_RE.fullmatch(component):
            raise _Invalid(
                f"invalid repository component {component!r}: lowercase letters and "
                "digits, joined by '.', '_', '__' or dashes"
            )


def _check_name_length(name: str) -> None:
    # Measured on the normalized name so that every Reference re-parses.
    if len(name) > NAME_MAX:
        raise _Invalid(f"name too long ({len(name)} characters, at most {NAME_MAX})")


def _check_tag(tag: str) -> None:
    if len(tag) > TAG_MAX:
        raise _Invalid(f"bad tag: longer than {TAG_MAX} characters")
    if not tag.isascii() or not _TAG_RE.fullmatch(tag):
        raise _Invalid(
            f"bad tag {tag!r}: letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        )


def _check_digest(text: str) -> Digest:
    try:
        return parse_digest(text)
    except BadImage:
        raise _Invalid(f"bad digest {text!r}: want sha256:<64 hex> or sha512:<128 hex>") from None


def _with_tag_and_digest(name: str, tag: str | None, digest: Digest | None) -> str:
    text = name
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    return text


def _compose(reference: Reference) -> str:
    return _with_tag_and_digest(reference.name, reference.tag, reference.digest)
