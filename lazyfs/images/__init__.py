"""The image providers as the provisioner sees them: an ``Image`` in, blobs in the store out.

``docker`` (local archives and registries) and ``appc`` (store and simple
discovery) put verified blobs in the store; ``spec`` turns what a user names
into the ``Image`` protobuf.

Imports: lazyfs.store, lazyfs.index, lazyfs.tree, lazyfs.progress, lazyfs.publish, providers.
"""
