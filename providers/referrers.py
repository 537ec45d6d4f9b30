"""OCI referrers: the manifests whose ``subject`` is a given manifest.

Found through the OCI 1.1 Referrers API (``GET /v2/NAME/referrers/DIGEST``,
an OCI index of descriptors, each with its ``artifactType``), or, on a
registry without it (it answers 404: Debian's ``docker-registry`` 2.8), the
referrers tag schema: an OCI index kept by clients at the tag
``<algorithm>-<encoded digest>`` (``referrers_tag``).

Listing (``list_referrers``) tries the API and falls back to the tag; a
tag that holds no valid index means no referrers, as the distribution spec
says.  The API may answer in pages: each names the next in a ``Link``
header (RFC 5988, ``rel="next"``, ``next_link``), followed on the same
registry (scheme, host and port) only, up to ``MAX_PAGES`` pages of
``PAGE_LIMIT`` bytes and ``TOTAL_LIMIT`` in all; a list longer than that is
BadImage, as one answer over ``PAGE_LIMIT`` always was: a list cut short
would say "none of that type" when the type is on a page not read.  A
caller that asks unfiltered and names the types it ``wanted`` gets, when
the list does not come in one answer (paged, or over ``PAGE_LIMIT``), the
lists of those types instead, asked with ``?artifactType=`` one by one,
rather than every page of another tool's thousands of signatures.

Adding (``add_referrer``) after pushing a manifest with a subject:
a registry that answered the push with ``OCI-Subject`` keeps the API's list
itself; any other gets the tag read, our descriptor added if it is not
there yet, and the tag written back.  The read-modify-write keeps every
other entry as it was, fields it does not know included, so referrers
pushed by other tools stay listed.  A tag that holds anything but an OCI
image index this module can read (another manifest, an index with an entry
that is no descriptor) is BadImage and left as it is: the spec has the
client report a failure and skip the update, and writing over it would
drop what another tool put there.

Two clients writing the tag at the same moment can lose one entry: the
spec leaves that race to clients, and ``docker-registry`` has no
conditional PUT to close it.  ``add_referrer`` narrows it: it reads the
tag back after writing, and writes again (up to ``TAG_WRITES`` times) when
another writer's index replaced ours without our entry.  What is left is a
writer that read the tag before our write and writes after our read-back:
its write lands later than a round trip after ours, so it is rarer, not
impossible (a writer that reads back after ours would be needed to see it).

``referrer_entries``, ``with_referrer`` and ``next_link`` are pure.
Blocking otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from providers import untrusted_json
from providers.digest import Digest, parse_digest
from providers.errors import BadImage, TemporaryFailure
from providers.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    METADATA_LIMIT,
    OCI_INDEX,
    OCI_MANIFEST,
)
from providers.registry_http import redact
from providers.registry_push import RegistryPush

SUBJECT_HEADER = "OCI-Subject"
FILTERS_HEADER = "OCI-Filters-Applied"
# Writes of the referrers tag one add_referrer makes before it gives up on
# writers that keep replacing it.
TAG_WRITES = 3
# One answer of the Referrers API, the pages one listing follows, their bytes in all.
PAGE_LIMIT = 1 << 20
MAX_PAGES = 16
TOTAL_LIMIT = 4 << 20
# What the tag is read with: whatever is there comes back, so a manifest another tool
# put at the tag is seen (and refused) rather than answered 404 and written over.
TAG_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
_TAG_CHARS = re.compile(r"[^a-zA-Z0-9_.-]")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = r'"(?:[^"\\]|\\.)*"|[^;,\s]*'
_LINK = re.compile(rf"<([^>]*)>((?:\s*;\s*{_TOKEN}\s*(?:=\s*(?:{_VALUE}))?)*)")
_PARAM = re.compile(rf";\s*({_TOKEN})\s*(?:=\s*({_VALUE}))?")
_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Referrer:
    """One manifest naming the subject: its descriptor as a referrers index lists it."""

    digest: Digest
    size: int
    media_type: str
    artifact_type: str
    annotations: Mapping[str, str]


def referrers_tag(digest: Digest) -> str:
    """The referrers tag of ``digest``: ``sha256-<hex>``, as the distribution spec builds it."""
    algorithm, _, encoded = digest.partition(":")
    return f"{_TAG_CHARS.sub('-', algorithm[:32])}-{_TAG_CHARS.sub('-', encoded[:64])}"


def referrer_entries(data: bytes) -> tuple[Referrer, ...]:
    """The referrers listed in the OCI index ``data``; BadImage when it is no such index.

    Entries that are not valid descriptors are skipped: another tool's
    damage must not hide ours.
    """
    doc = _index_doc(data)
    found = []
    for item in doc["manifests"]:
        try:
            digest = parse_digest(str(item["digest"]))
            size = untrusted_json.size(item.get("size"))
        except (BadImage, KeyError, TypeError, ValueError):
            continue
        notes = item.get("annotations")
        notes = (
            {str(k): str(v) for k, v in notes.items() if isinstance(v, str)}
            if isinstance(notes, dict)
            else {}
        )
        found.append(
            Referrer(
                digest,
                size,
                str(item.get("mediaType", "")),
                str(item.get("artifactType", "")),
                notes,
            )
        )
    return tuple(found)


def _index_doc(data: bytes) -> dict[str, Any]:
    try:
        # A descriptor is some 150 bytes: a list up to TOTAL_LIMIT (or a tag of 16 MiB)
        # of nested arrays would take 30 to 45 times its size to parse.
        doc = untrusted_json.loads(data, per_container=16)
    except ValueError as error:
        raise BadImage(f"referrers list is not JSON of an index: {error}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("schemaVersion") != 2
        or not isinstance(doc.get("manifests"), list)
    ):
        raise BadImage("referrers list is not an OCI image index")
    if not all(isinstance(item, dict) for item in doc["manifests"]):
        raise BadImage("referrers list has an entry that is not a descriptor")
    return doc


def with_referrer(current: bytes | None, entry: Referrer) -> bytes | None:
    """The referrers index ``current`` (None: none yet) with ``entry`` in it.

    None when it is there already (nothing to write).  Other entries are
    kept as the JSON values they were (fields unknown here too), in order.
    BadImage when ``current`` is no index this module reads: replacing it
    would drop what it lists.
    """
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if current is not None:
        doc = _index_doc(current)
    if any(item.get("digest") == entry.digest for item in doc["manifests"]):
        return None
    item: dict[str, Any] = {
        "mediaType": entry.media_type,
        "digest": entry.digest,
        "size": entry.size,
        "artifactType": entry.artifact_type,
    }
    if entry.annotations:
        item["annotations"] = dict(entry.annotations)
    doc["manifests"].append(item)
    return json.dumps(doc, separators=(",", ":")).encode()


def next_link(header: str) -> str | None:
    """The target of the first ``rel="next"`` link in the ``Link`` header ``header``, as
    written there (relative or absolute); None when there is none.

    RFC 8288 (5988's successor): comma-separated ``<target>; param=value``
    links, ``rel`` quoted or not, several space-separated relation types in
    it, compared without case.
    """
    for link in _LINK.finditer(header):
        for name, value in _PARAM.findall(link.group(2)):
            if name.lower() != "rel":
                continue
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if "next" in value.lower().split():
                return link.group(1).strip()
            break  # the first rel of a link is its rel (RFC 8288 3.3)
    return None


@dataclass(frozen=True)
class _Answer:
    """What the Referrers API listed: ``more`` says why the list was not read to its end."""

    referrers: tuple[Referrer, ...]
    filtered: bool  # the registry says it applied the artifactType filter
    more: str = ""


def _same_registry(push: RegistryPush, page_url: str, target: str) -> str:
    """``target`` (a next link on ``page_url``) as an absolute URL; BadImage when it leaves
    ``push``'s registry: its pages are asked with its credentials."""
    url = urljoin(page_url, target)

    def origin(address: str) -> tuple[str, str, int | None]:
        parts = urlsplit(address)
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or _PORTS.get(scheme)

    try:
        same = origin(url) == origin(push.base)
    except ValueError:  # a port that is no number
        same = False
    if not same:
        raise BadImage(f"{push.image}: the next page of referrers is elsewhere: {redact(url)}")
    return url


def _ask(push: RegistryPush, url: str, pages: int) -> _Answer | None:
    """The Referrers API's list at ``url``, its next pages followed (up to ``pages`` in
    all); None when the API is not there (404)."""
    found: list[Referrer] = []
    total, filtered = 0, False
    for page in range(pages):
        response = push.http.get(
            url,
            image=push.image,
            scope=push.read_scope,
            headers={"Accept": OCI_INDEX},
            ok=(200, 404) if page == 0 else (200,),  # a page gone since: NotFound
        )
        if response.status_code == 404:
            push.http.discard(response)
            return None
        if page == 0:
            applied = response.headers.get(FILTERS_HEADER, "").lower().split(",")
            filtered = "artifacttype" in (name.strip() for name in applied)
        link = next_link(response.headers.get("Link", ""))
        data = push.http.read_capped(response, PAGE_LIMIT)  # closes it
        if data is None or total + len(data) > TOTAL_LIMIT:
            over = PAGE_LIMIT if data is None else TOTAL_LIMIT
            why = f"referrers at {redact(url)} are over {over >> 20} MiB"
            return _Answer(tuple(found), filtered, why)
        total += len(data)
        found.extend(referrer_entries(data))
        if link is None:
            return _Answer(tuple(found), filtered)
        if page + 1 == pages:
            break
        url = _same_registry(push, response.url or url, link)
    return _Answer(tuple(found), filtered, f"referrers at {redact(url)} take over {pages} pages")


def _tag_index(got: tuple[bytes, str] | None) -> bytes | None:
    """The OCI image index of what a referrers tag holds (``got``: its bytes and media type,
    None when there is no tag); BadImage (saying what is there) for another manifest."""
    if got is None:
        return None
    data, media_type = got
    if not media_type:  # a registry that does not say: the document does
        try:
            media_type = str(untrusted_json.loads(data).get("mediaType", ""))
        except (ValueError, AttributeError):
            media_type = ""
    if media_type != OCI_INDEX:
        kind = media_type or "a manifest of no media type"
        raise BadImage(f"it holds {kind}, not an OCI image index")
    return data


def list_referrers(
    push: RegistryPush,
    subject: Digest,
    artifact_type: str | None = None,
    wanted: Sequence[str] = (),
) -> tuple[Referrer, ...]:
    """The referrers of ``subject`` in ``push``'s repository (of ``artifact_type`` only, if given).

    One request to the Referrers API (one a page), a second for the tag
    when it answers 404.  ``wanted``, with no ``artifact_type``: the types
    the caller looks for; an unfiltered list that does not come in one
    answer is given as the lists of those types instead.  BadImage for a
    list longer than ``MAX_PAGES`` or ``TOTAL_LIMIT``, or paged elsewhere.
    """
    url = f"{push.base}/v2/{push.repository}/referrers/{subject}"
    if artifact_type:
        url += f"?artifactType={quote(artifact_type, safe='')}"
    probing = bool(wanted) and not artifact_type
    answer = _ask(push, url, 1 if probing else MAX_PAGES)
    if answer is None:
        got = push.get_manifest(referrers_tag(subject), TAG_ACCEPT)
        try:
            tagged = _tag_index(got)
            found = referrer_entries(tagged) if tagged is not None else ()
        except BadImage:
            return ()  # the spec: a tag that is no valid index lists nothing
    elif answer.more and probing:
        return tuple(
            r for kind in dict.fromkeys(wanted) for r in list_referrers(push, subject, kind)
        )
    elif answer.more:
        raise BadImage(f"{push.image}: {answer.more}")
    elif answer.filtered:
        return answer.referrers  # OCI-Filters-Applied: the registry filtered them
    else:
        found = answer.referrers
    # A registry may ignore the filter (it then does not say OCI-Filters-Applied): filter here.
    return tuple(r for r in found if not artifact_type or r.artifact_type == artifact_type)


def add_referrer(
    push: RegistryPush, subject: Digest, entry: Referrer, answer: Mapping[str, str]
) -> bool:
    """Make ``entry`` listed as a referrer of ``subject``; ``answer``: the headers of its push.

    True when the tag was written, False when the registry keeps the list
    itself (``OCI-Subject`` answered) or the tag had it already. The tag is
    read back after each write; TemporaryFailure when other writers replaced
    it without the entry ``TAG_WRITES`` times over.  BadImage, the tag left
    as it is, when it holds anything but an OCI image index this reads.
    """
    headers = {k.lower(): v for k, v in answer.items()}
    if headers.get(SUBJECT_HEADER.lower()) == subject:
        return False
    tag = referrers_tag(subject)
    for writes in range(TAG_WRITES + 1):
        # After a write, this read is the read-back: the entry there means done.
        got = push.get_manifest(tag, TAG_ACCEPT)
        if got is not None and len(got[0]) > METADATA_LIMIT:
            raise BadImage(f"{push.image}: referrers tag {tag} is too large to update")
        try:
            updated = with_referrer(_tag_index(got), entry)
        except BadImage as error:
            # Not written over: what it lists (another tool's) would be lost.
            raise BadImage(f"{push.image}: referrers tag {tag} left as it is: {error}") from None
        if updated is None:
            return writes > 0
        if writes == TAG_WRITES:
            break
        push.put_manifest(tag, updated, OCI_INDEX)
    raise TemporaryFailure(
        f"{push.image}: referrers tag {tag} was replaced without {entry.digest} "
        f"after each of {TAG_WRITES} writes: other clients are writing it"
    )
