"""Image GC: removing images and layers no container uses until the store has room.

``config`` reads ``--image_gc_config`` (Mesos' ``ImageGcConfig``); ``uses``
finds what containers, their volumes and live mounts use; ``trash`` is the
``gc/`` area every removal goes through, so a killed pass never leaves half
a layer at a trusted name; ``stale`` finds leftovers of earlier versions;
``collect`` is the pass, ``images prune`` and ``images rm``.

Imports: lazyfs.store, lazyfs.index, lazyfs.tree, lazyfs.provision.usage, providers.
"""
