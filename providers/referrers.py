"""OCI referrers: the manifests whose ``subject`` is a given manifest.

Found through the OCI 1.1 Referrers API (``GET /v2/NAME/referrers/DIGEST``,
an OCI index of descriptors, each with its ``artifactType``), or, on a
registry without it (it answers 404: Debian's ``docker-registry`` 2.8), the
referrers tag schema: an OCI index kept by clients at the tag
``<algorithm>-<encoded digest>`` (``referrers_tag``).

Listing (``list_referrers``) tries the API and falls back to the tag; a
tag that holds no valid index means no referrers, as the distribution spec
says.  Adding (``add_referrer``) after pushing a manifest with a subject:
a registry that answered the push with ``OCI-Subject`` keeps the API's list
itself; any other gets the tag read, our descriptor added if it is not
there yet, and the tag written back.  The read-modify-write keeps every
other entry as it was, fields it does not know included, so referrers
pushed by other tools stay listed.

Two clients writing the tag at the same moment can lose one entry: the
spec leaves that race to clients, and ``docker-registry`` has no
conditional PUT to close it.  ``add_referrer`` narrows it: it reads the
tag back after writing, and writes again (up to ``TAG_WRITES`` times) when
another writer's index replaced ours without our entry.  What is left is a
writer that read the tag before our write and writes after our read-back:
its write lands later than a round trip after ours, so it is rarer, not
impossible (a writer that reads back after ours would be needed to see it).

``referrer_entries`` and ``with_referrer`` are pure.  Blocking otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from providers import untrusted_json
from providers.digest import Digest, parse_digest
from providers.errors import BadImage, TemporaryFailure
from providers.manifest import METADATA_LIMIT, OCI_INDEX
from providers.registry_http import redact
from providers.registry_push import RegistryPush

SUBJECT_HEADER = "OCI-Subject"
# Writes of the referrers tag one add_referrer makes before it gives up on
# writers that keep replacing it.
TAG_WRITES = 3
_TAG_CHARS = re.compile(r"[^a-zA-Z0-9_.-]")


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
            size = int(item["size"])
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
        doc = untrusted_json.loads(data)
    except ValueError:
        raise BadImage("referrers list is not JSON") from None
    if (
        not isinstance(doc, dict)
        or doc.get("schemaVersion") != 2
        or not isinstance(doc.get("manifests"), list)
        or not all(isinstance(item, dict) for item in doc["manifests"])
    ):
        raise BadImage("referrers list is not an OCI image index")
    return doc


def with_referrer(current: bytes | None, entry: Referrer) -> bytes | None:
    """The referrers index ``current`` (None: none yet) with ``entry`` in it.

    None when it is there already (nothing to write).  Other entries are
    kept as the JSON values they were (fields unknown here too), in order; an invalid
    ``current`` is replaced (it lists nothing a client can read).
    """
    doc: dict[str, Any]
    try:
        doc = _index_doc(current) if current is not None else {}
    except BadImage:
        doc = {}
    if not doc:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
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


def list_referrers(
    push: RegistryPush, subject: Digest, artifact_type: str | None = None
) -> tuple[Referrer, ...]:
    """The referrers of ``subject`` in ``push``'s repository (of ``artifact_type`` only, if given).

    One request to the Referrers API, a second for the tag when it answers 404.
    """
    url = f"{push.base}/v2/{push.repository}/referrers/{subject}"
    if artifact_type:
        url += f"?artifactType={quote(artifact_type, safe='')}"
    response = push.http.get(
        url,
        image=push.image,
        scope=push.read_scope,
        headers={"Accept": OCI_INDEX},
        ok=(200, 404),
    )
    if response.status_code == 404:
        push.http.discard(response)
        data = None
    else:
        data = push.http.read_capped(response, 1 << 20)  # closes it
        if data is None:
            raise BadImage(f"{push.image}: referrers at {redact(url)} are over 1 MiB")
    if data is None:
        tagged = push.get_manifest(referrers_tag(subject), OCI_INDEX)
        if tagged is None:
            return ()
        try:
            found = referrer_entries(tagged[0])
        except BadImage:
            return ()  # the spec: a tag that is no valid index lists nothing
    else:
        found = referrer_entries(data)
    # The registry may ignore the filter (it says so with OCI-Filters-Applied): filter here.
    return tuple(r for r in found if not artifact_type or r.artifact_type == artifact_type)


def add_referrer(
    push: RegistryPush, subject: Digest, entry: Referrer, answer: Mapping[str, str]
) -> bool:
    """Make ``entry`` listed as a referrer of ``subject``; ``answer``: the headers of its push.

    True when the tag was written, False when the registry keeps the list
    itself (``OCI-Subject`` answered) or the tag had it already. The tag is
    read back after each write; TemporaryFailure when other writers replaced
    it without the entry ``TAG_WRITES`` times over.
    """
    headers = {k.lower(): v for k, v in answer.items()}
    if headers.get(SUBJECT_HEADER.lower()) == subject:
        return False
    tag = referrers_tag(subject)
    for writes in range(TAG_WRITES + 1):
        # After a write, this read is the read-back: the entry there means done.
        current = push.get_manifest(tag, OCI_INDEX)
        if current is not None and len(current[0]) > METADATA_LIMIT:
            raise BadImage(f"{push.image}: referrers tag {tag} is too large to update")
        updated = with_referrer(current[0] if current else None, entry)
        if updated is None:
            return writes > 0
        if writes == TAG_WRITES:
            break
        push.put_manifest(tag, updated, OCI_INDEX)
    raise TemporaryFailure(
        f"{push.image}: referrers tag {tag} was replaced without {entry.digest} "
        f"after each of {TAG_WRITES} writes: other clients are writing it"
    )
