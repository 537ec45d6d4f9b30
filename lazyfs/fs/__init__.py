"""The FUSE filesystem: operations, the writable upper, and the mount process.

``read_only`` and ``writable`` (with their no-open variants, and
``writable_names``, the handlers both writable paths share) map FUSE
requests onto a merged tree and an ``upper`` (``upper``, ``upper_copy``,
``upper_state``, ``upper_load``, which reads back an upper a mount left,
``upper_aside``, which makes each name change whole or none, and
``upper_disk``, the ``*at`` calls they work through: no FUSE code,
refusals are ``UpperError``); ``boundary`` is where every
error of a handler becomes its answer; ``mount_main`` is the process that
indexes an image's layers in the store and serves one mount (with the
options of ``mount_options``); ``mount`` is the
public mount API the backends call, and loads no FUSE, index or tree code
itself (providers only). The mount process finds blobs through lazyfs.store.
``predict`` reads ahead, on a first start, what an executable a mount
serves will load (``elf_deps`` parses its headers); ``predict_toc`` and
``predict_libs`` ask for the program and what it loads from eStargz TOCs
while the mount still indexes them.

Imports: lazyfs.index, lazyfs.tree, lazyfs.blobs, lazyfs.store, lazyfs.cache, providers.
"""
