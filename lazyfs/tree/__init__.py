"""The merged tree: the union of an image's layer indexes, and the trees kept in the store.

``merge`` replays the indexes bottom first with the whiteout rules of
``providers.layer_rules``; ``kept`` stores a merged tree beside its top layer so
that a later mount of the same image merges nothing.  ``packed`` is a
read-only binary form of a merged tree (``packed_write``, ``packed_read``)
that mounts map and read in place, sharing its pages: ``mapped`` keeps it
beside the kept tree and opens it for a mount, ``lower`` is the interface
the FUSE operations read either form through.

Imports: lazyfs.index, lazyfs.store.atomic, providers.
"""
