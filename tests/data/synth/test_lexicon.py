from __future__ import annotations

import pytest

from omniseg.data.synth import lexicon


def test_class_names_order_and_ids():
    names = lexicon.class_names()
    assert len(names) == len(lexicon.SHAPES) * len(lexicon.COLORS) == 80
    assert len(set(names)) == len(names)
    # shape-major: first all colors of the first shape
    assert names[0] == "red circle" and names[1] == "orange circle" and names[8] == "red ellipse"
    assert names[-1] == "white star"
    for i, n in enumerate(names):
        color, shape = lexicon.split_name(n)
        assert lexicon.category_id_of(color, shape) == i + 1
        assert lexicon.shape_color_of(i + 1) == (shape, color)


def test_required_shapes_present():
    for s in ("ring", "crescent", "cross", "star", "circle"):
        assert s in lexicon.SHAPES


def test_synonyms_of_thing():
    syn = lexicon.synonyms_of("red circle")
    assert "red circle" not in syn
    assert "crimson disk" in syn and "red disk" in syn and "scarlet circle" in syn
    expected = (1 + len(lexicon.COLOR_SYNONYMS["red"])) * (1 + len(lexicon.SHAPE_SYNONYMS["circle"])) - 1
    assert len(syn) == len(set(syn)) == expected
    assert "hoop" in " ".join(lexicon.synonyms_of("blue ring"))


def test_synonyms_of_stuff_and_unknown():
    assert lexicon.synonyms_of("grass") == list(lexicon.STUFF_SYNONYMS["grass"])
    with pytest.raises(ValueError, match="not a synthetic thing class"):
        lexicon.synonyms_of("purple elephant")
    with pytest.raises(ValueError):
        lexicon.shape_color_of(81)
    with pytest.raises(ValueError):
        lexicon.shape_color_of(0)


def test_hypernym_phrases():
    hp = lexicon.hypernym_phrases_of("green star")
    assert "green shape" in hp and "emerald object" in hp
    assert not any("star" in p for p in hp)


def test_categories():
    cats = lexicon.categories()
    things = [c for c in cats if c.isthing]
    stuff = [c for c in cats if not c.isthing]
    assert [c.id for c in things] == list(range(1, 81))
    assert [c.name for c in things] == lexicon.class_names()
    assert [c.name for c in stuff] == list(lexicon.STUFF_NAMES)
    assert [c.id for c in stuff] == list(range(81, 81 + len(lexicon.STUFF_NAMES)))
    assert all(lexicon.stuff_id_of(c.name) == c.id for c in stuff)
    assert things[6 * 8].supercategory == "ring" and things[6 * 8].name == "red ring"
    assert things[0].synonyms == lexicon.synonyms_of("red circle")
    for s in ("grass", "water", "sand", "sky", "wall"):
        assert s in lexicon.STUFF_NAMES
