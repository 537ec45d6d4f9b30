"""Layer indexes: what a layer holds and where its bytes are, with no view of a tree.

The model (``model``: entries, kinds, the on-disk index files), one streaming
scan that builds an index from a layer blob (``build``), and gzip checkpoints
for random access into a gzip blob (``gzip_checkpoints``).

Imports: providers.
"""
