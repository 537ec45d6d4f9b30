"""The store: the one owner of the on-disk layout of blobs, layers and images.

``atomic`` is how every file trusted by its name is written (temporary
file, fsync, rename, directory fsync); the other subpackages may import it
alone, without the rest of the store.

Imports: providers.
"""
