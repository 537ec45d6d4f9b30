"""Helpers shared by the test suites: plain modules, no tests and no fixtures.

Test modules and conftests import from here, never from each other, so a
test module can be moved, split or deleted without breaking another suite.
Fixtures stay in the conftest.py files, which import what they need from
here.

- images, rich_image, backend_cases: test images built with tarfile, umoci
  and skopeo; the rich image; the layer stacks every backend must agree on.
- tar_members, hostile_layers, apply_model, sparse: tar layers made entry by
  entry, hostile ones, a model of the layer rules, GNU sparse forms.
- tree, layer_trees: trees digested for comparison; one layer stack's tree
  as each backend makes it.
- backend_variants: the backends the conformance suites run, provisioning
  and comparing.
- fuse_paths, fuse_mounts, writable_ops, cow_mounts: the two FUSE paths,
  real mounts and their teardown, the writable operations in-process,
  writable mounts beside kernel overlayfs mounts of the same layers.
- httpserver, registry_servers, registry_seed, registry_pulls, fault_proxy:
  servers the tests own (docker-registry, tokens, a proxy that misbehaves),
  and pulling through them.
- acis, actool: Appc images and the spec's actool.
- lazyfs_cli: the ``lazyfs`` command run as a user runs it; terminal: with
  its stderr on a pty of a given width, for the progress tests.
- processes: ending the servers the tests start.
- ci_skips: under CI a skip is a failure.
"""
