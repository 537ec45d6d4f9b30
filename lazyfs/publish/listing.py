"""One referrers listing of an image, shared by every lookup a provision makes.

A lazy provision that trusts published indexes looks for two artifacts
beside the image: the layer indexes (``lazyfs.publish.fetch``) and the
learned prefetch traces (``lazyfs.publish.traces``).  Both are found in the
same list of the image's referrers, so it is asked for once, unfiltered
(``list_image``: one request to the Referrers API, a second for the
referrers tag on a registry without it, such as Debian's
``docker-registry``), and each lookup picks its own artifact type from it
(``Listing.of_type``).  Filtering here rather than asking the registry to
filter is what makes one answer serve both; a registry may ignore the
filter anyway.  But when that answer is not the whole list (it names a
next page, or is over the size one answer may have: an image with
thousands of signatures), the two types lazyfs reads (``WANTED``) are
asked for one by one, filtered (``providers.referrers.list_referrers``):
two answers of a few entries instead of every page of the others, and no
artifact of ours left unseen on a page not read.

The listing lives as long as the provision that made it: nothing of it is
kept in this process or on disk.  What it found is kept where it is used
instead: the store's image record names each layer's index blob, so a
later provision of that image digest does not look again, and the traces
are kept under the store.  An answer that found nothing is kept nowhere,
so an index or a trace pushed later, by another process or machine, is
found by the next provision: a negative answer cached by image digest
would hide it for as long as the cache lives.  Blocking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from lazyfs.index.artifact import ARTIFACT_TYPE
from lazyfs.index.trace import TRACE_ARTIFACT_TYPE
from lazyfs.publish.push import repository_push
from providers.digest import Digest
from providers.errors import LazyfsError
from providers.referrers import Referrer, list_referrers
from providers.registry import RegistryClient
from providers.registry_push import RegistryPush

log = logging.getLogger(__name__)

# The OCI annotation of when an artifact was made, which referrers lists may carry.
CREATED = "org.opencontainers.image.created"
# Artifacts of one type tried, the newest first, until one reads: each that does not
# is a round trip, and a list of 1 MiB names thousands, which would hold the start.
MAX_TRIED = 4
# The artifact types a listing is for: the layer indexes and the prefetch traces.
WANTED = (ARTIFACT_TYPE, TRACE_ARTIFACT_TYPE)


@dataclass(frozen=True)
class Listing:
    """The referrers of ``subject`` in ``push``'s repository, as one answer listed them."""

    push: RegistryPush
    subject: Digest
    referrers: tuple[Referrer, ...]

    def of_type(self, artifact_type: str, limit: int | None = MAX_TRIED) -> list[Referrer]:
        """The newest ``limit`` referrers of ``artifact_type`` (all for None), the newest
        first (``newest_first``)."""
        found = [r for r in self.referrers if r.artifact_type == artifact_type]
        return newest_first(found)[:limit]


def list_image(client: RegistryClient, reference: str, digest: Digest) -> Listing | None:
    """The referrers of image ``reference``, manifest ``digest``, at its origin; None (one
    warning) when they cannot be listed."""
    try:
        push = repository_push(client, reference)
        return Listing(push, digest, list_referrers(push, digest, None, WANTED))
    except LazyfsError as error:
        log.warning("%s: cannot look for published indexes and traces: %s", reference, error)
        return None


def newest_first(referrers: Sequence[Referrer]) -> list[Referrer]:
    """``referrers``, the newest first: by their ``CREATED`` annotation, then last listed first.

    Listed later is newer where the referrers tag lists them: a push appends
    (``providers.referrers.with_referrer``).
    """
    order = sorted(
        range(len(referrers)),
        key=lambda at: (referrers[at].annotations.get(CREATED, ""), at),
        reverse=True,
    )
    return [referrers[at] for at in order]
