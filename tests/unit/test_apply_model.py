"""apply_layers against a small in-memory model of the layer rules.

Hypothesis draws stacks of layers over a tiny alphabet so that names collide
often, applies them to a real directory, and compares the tree with what the
model predicts: path -> ("dir",), ("file", content) or ("link", target); or,
when the model refuses the stack, the same error class.

The model states the rules the way the OCI image spec does, per layer: first
the whiteouts and opaque markers hide what lower layers made, then the
layer's entries are written in order.  A streaming extractor meets the
markers wherever the archive puts them, so two stack shapes are drawn:

- markers first in every layer (what the spec asks of producers), with
  symlinks, including ones whose targets climb, loop, or restart at "/";
- markers anywhere, without symlinks, in well-formed layers (every entry's
  parent directories listed before it, as every tar writer does).
"""

from __future__ import annotations

from hypothesis import given, reject, settings

from tests.support.apply_model import DIR, Entry, Unpredictable, predicted, real, stacks


@settings(max_examples=200, deadline=None)
@given(stacks(symlinks=True))
def test_markers_first_with_symlinks(layers: list[list[Entry]]) -> None:
    assert real(layers) == predicted(layers, ordered=True)


@settings(max_examples=200, deadline=None)
@given(stacks(symlinks=False))
def test_markers_anywhere_without_symlinks(layers: list[list[Entry]]) -> None:
    try:
        expected = predicted(layers, ordered=False)
    except Unpredictable:
        reject()
    assert real(layers) == expected


def test_a_directory_replacing_the_symlink_its_own_path_went_through() -> None:
    # "b/b" goes through "b" -> ".", so it names "b" itself: the directory
    # replaces the symlink, and "b/b" names a new path from then on.
    layers = [[("link", ("b",), "."), ("dir", ("b", "b"), ""), ("file", ("b", "b", "a"), "x")]]
    assert predicted(layers, ordered=True) == {
        ("b",): DIR,
        ("b", "b"): DIR,
        ("b", "b", "a"): ("file", "x"),
    }
    assert real(layers) == predicted(layers, ordered=True)
