"""Publishing layer indexes beside their image, and finding them there.

``push`` builds (or takes from the store) the index of each gzip or plain
tar layer of a pulled image, and pushes them to the image's repository as
an OCI artifact whose ``subject`` is the image manifest
(``lazyfs.index.artifact``, ``lazyfs.index.artifact_manifest``), listed
through the referrers API or the referrers tag (``providers.referrers``).
``fetch`` finds and keeps them for a lazy pull; ``traces`` does both for
learned prefetch traces.

Imports: lazyfs.index, lazyfs.store, providers.
"""
