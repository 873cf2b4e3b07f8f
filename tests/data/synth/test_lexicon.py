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
    # {red, crimson, scarlet} x {circle, disk, disc, round blob}, less the name itself
    assert sorted(syn) == [
        "crimson circle", "crimson disc", "crimson disk", "crimson round blob",
        "red disc", "red disk", "red round blob",
        "scarlet circle", "scarlet disc", "scarlet disk", "scarlet round blob",
    ]
    assert len(syn) == len(set(syn)) == 11
    assert "hoop" in " ".join(lexicon.synonyms_of("blue ring"))


def test_synonyms_of_stuff_and_unknown():
    assert lexicon.synonyms_of("grass") == ["lawn", "turf"]
    assert lexicon.synonyms_of("wood") == ["planks", "timber"]
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


def test_ids_hand_worked():
    # 10 shapes x 8 colours, shape-major: id = 8 * shape index + colour index + 1
    # (shapes circle, ellipse, ..., ring = 6, ..., star = 9; colours red = 0, ..., blue = 4, ..., white = 7)
    assert lexicon.num_things() == 80
    assert lexicon.category_id_of("red", "circle") == 1
    assert lexicon.category_id_of("white", "circle") == 8
    assert lexicon.category_id_of("red", "ellipse") == 9
    assert lexicon.category_id_of("blue", "ring") == 53
    assert lexicon.category_id_of("white", "star") == 80
    assert lexicon.shape_color_of(53) == ("ring", "blue")
    assert lexicon.shape_color_of(17) == ("square", "red")
    assert lexicon.shape_color_of(80) == ("star", "white")
    assert lexicon.stuff_id_of("grass") == 81 and lexicon.stuff_id_of("wood") == 86


def test_categories():
    cats = lexicon.categories()
    things = [c for c in cats if c.isthing]
    stuff = [c for c in cats if not c.isthing]
    assert [c.id for c in things] == list(range(1, 81))
    assert [c.name for c in things] == lexicon.class_names()
    assert [(c.id, c.name) for c in stuff] == [
        (81, "grass"), (82, "water"), (83, "sand"), (84, "sky"), (85, "wall"), (86, "wood")
    ]
    assert all(lexicon.stuff_id_of(c.name) == c.id for c in stuff)
    assert things[6 * 8].supercategory == "ring" and things[6 * 8].name == "red ring"
    assert things[52].name == "blue ring" and things[52].supercategory == "ring"
    assert things[0].name == "red circle" and "crimson disk" in things[0].synonyms


def test_curation_stuff_list_covers_the_synthetic_stuff():
    """ALP curation drops phrases headed by these words; its stuff list is generic (it does not
    import the synthetic world), so the synthetic stuff vocabulary is checked against it here.
    The synthetic words come first, in lexicon order (the list's order is recorded in curation
    configs)."""
    from omniseg.curate.phrases import DEFAULT_STUFF

    synth_words = [*lexicon.STUFF_NAMES, *(w for ws in lexicon.STUFF_SYNONYMS.values() for w in ws)]
    assert list(DEFAULT_STUFF[: len(synth_words)]) == synth_words
    assert len(set(DEFAULT_STUFF)) == len(DEFAULT_STUFF)
