"""Taxonomy construction, levels, ragged trees and validation."""

import pytest

from conftest import make_image_folder
from hierdemo.taxonomy import Taxonomy, TaxonomyError


def test_levels_parents_and_paths(small_tree):
    assert small_tree.levels == [["A", "B"], ["A/a1", "A/a2", "B/b1"]]
    assert small_tree.structure.parents[1].tolist() == [0, 0, 1]
    assert small_tree.path("A/a2") == ["A", "A/a2"]
    assert small_tree.structure.leaf_paths.tolist() == [[0, 0], [0, 1], [1, 2]]
    assert small_tree.siblings(1, "A/a1") == ["A/a1", "A/a2"]
    assert small_tree.siblings(0, "B") == ["A", "B"]


def test_ragged_leaf_is_carried_down():
    tree = Taxonomy.from_nested({"animal": {"bird": {"owl": {}, "flamingo": {}}, "fish": {}}, "plant": {}})
    assert tree.num_levels == 3
    assert tree.levels[2] == ["animal/bird/owl", "animal/bird/flamingo", "animal/fish", "plant"]
    assert tree.path("plant") == ["plant", "plant", "plant"]
    assert tree.path("animal/fish") == ["animal", "animal/fish", "animal/fish"]
    # a carried-down leaf is an only child of itself
    assert tree.siblings(2, "plant") == ["plant"]
    assert tree.siblings(2, "animal/fish") == ["animal/fish"]


def test_same_name_under_two_parents_gives_two_nodes():
    tree = Taxonomy.from_paths(["bird/other", "fish/other", "fish/cod"])
    assert "bird/other" in tree.leaves and "fish/other" in tree.leaves
    assert tree.name("bird/other") == tree.name("fish/other") == "other"


def test_formats_agree():
    nested = Taxonomy.from_nested({"animal": {"bird": ["owl", "flamingo"]}, "plant": {"tree": {}}})
    paths = Taxonomy.from_paths(["animal/bird/owl", "animal/bird/flamingo", "plant/tree"])
    csv_ = Taxonomy.from_csv_text("animal,bird,owl\nanimal,bird,flamingo\nplant,tree\n")
    edges = Taxonomy.from_csv_text("parent,child\nanimal,bird\nbird,owl\nbird,flamingo\nplant,tree\n")
    outline = Taxonomy.parse("animal\n  bird\n    owl\n    flamingo\nplant\n  - tree\n")
    as_json = Taxonomy.parse(nested.to_json())
    assert nested == paths == csv_ == outline == as_json
    assert set(edges.leaves) == set(nested.leaves)


def test_roundtrip_and_fingerprint_change():
    tree = Taxonomy.from_paths(["a/x", "a/y", "b"])
    assert Taxonomy.from_nested(tree.to_nested()).fingerprint == tree.fingerprint
    assert Taxonomy.from_paths(["a/x", "a/z", "b"]).fingerprint != tree.fingerprint


def test_display_names():
    tree = Taxonomy.from_paths(["foot_wear/ankle_boot", "foot_wear/sandal"])
    assert tree.name("foot_wear/ankle_boot") == "ankle boot"
    assert tree.prompt_parent("foot_wear/ankle_boot") == "foot wear"
    assert tree.prompt_parent("foot_wear") is None


@pytest.mark.parametrize("build, message", [
    (lambda: Taxonomy.from_paths(["only/one"]), "at least two classes"),
    (lambda: Taxonomy.from_paths(["animal/Cat", "animal/cat"]), "duplicate class names"),
    (lambda: Taxonomy.from_csv_text("parent,child\na,b\nb,c\nc,a\n"), "cycle"),
    (lambda: Taxonomy.from_csv_text("parent,child\na,c\nb,c\nb,d\n"), "more than one parent"),
    (lambda: Taxonomy.parse("   "), "empty"),
    (lambda: Taxonomy.parse("{not json"), "invalid JSON"),
    (lambda: Taxonomy.from_nested({"a/b": {}, "c": {}}), "contains '/'"),
])
def test_validation_errors(build, message):
    with pytest.raises(TaxonomyError, match=message):
        build()


def test_from_folder(tmp_path):
    make_image_folder(tmp_path, {"x/p": (1, 2, 3), "x/q": (4, 5, 6), "y": (7, 8, 9)}, per_class=1)
    (tmp_path / "z").mkdir()  # empty class folder
    (tmp_path / "__MACOSX" / "x").mkdir(parents=True)
    with pytest.raises(TaxonomyError, match="hold no images: z"):
        Taxonomy.from_folder(tmp_path)
    tree = Taxonomy.from_folder(tmp_path, strict=False)
    assert tree.leaves == ["x/p", "x/q", "y"]


def test_from_file(tmp_path):
    (tmp_path / "t.yaml").write_text("animal:\n  bird:\n  fish:\nplant:\n")
    (tmp_path / "t.csv").write_text("animal/bird\nanimal/fish\nplant\n")
    assert Taxonomy.from_file(tmp_path / "t.yaml") == Taxonomy.from_file(tmp_path / "t.csv")
