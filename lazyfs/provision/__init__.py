"""The provisioner and the runtime: rootfses per container, and running them.

``provisioner`` records, destroys and recovers rootfses built by a backend
(``build``; ``revive`` mounts a kept one again), with ``records`` holding
what it records and reports (``ProvisionInfo``, ``RecoverReport``) and the
checks on what it is given; ``volumes`` are Mesos' image volumes, a
container's further images mounted into it, whose images are all fetched
before any rootfs is built (``fetch_first``); ``usage`` reads the records
alone, for ``lazyfs ps`` and for image GC (``used_images``); ``devmount`` is
``lazyfs mount`` for a person; ``runtime`` writes OCI bundles and runs them
with runc; ``lazy`` decides which layers of an image stay in its registry
for the fuse backend, read through the cache daemon (and begins a prefetch
trace's replay as soon as the trace is fetched, through
``lazyfs.fs.mount_ahead``), and ``lazy_progress``
shows on a terminal what a lazy mount fetches before it is ready.

Imports: lazyfs.store, lazyfs.images, lazyfs.fs.mount, lazyfs.fs.mount_ahead, lazyfs.cache, lazyfs.progress, backends, providers.
"""  # noqa: E501 (the one line tests/unit/test_package_imports.py reads)
