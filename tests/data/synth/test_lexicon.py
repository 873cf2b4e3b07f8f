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


def test_pretraining_pairs_exclude_every_evaluation_class():
    pairs = lexicon.pretraining_pairs()
    n_shapes = len(lexicon.SHAPES) + len(lexicon.PRETRAINING_SHAPES)
    n_colors = len(lexicon.COLORS) + len(lexicon.PRETRAINING_COLORS)
    assert (n_shapes, n_colors) == (16, 14)
    assert len(pairs) == 16 * 14 - 80 == 144 and len(set(pairs)) == 144
    evaluation = {lexicon.split_name(n)[::-1] for n in lexicon.class_names()}  # (shape, color)
    assert len(evaluation) == 80 and not evaluation & set(pairs)
    assert not {f"{c} {s}" for s, c in pairs} & set(lexicon.class_names())
    assert not set(lexicon.PRETRAINING_SHAPES) & set(lexicon.SHAPES)
    assert not set(lexicon.PRETRAINING_COLORS) & set(lexicon.COLORS)
    # shape-major over SHAPES + PRETRAINING_SHAPES, colors in COLORS + PRETRAINING_COLORS order:
    # each evaluation shape in the 6 new colors (ids 1..60), each new shape in all 14 (61..144)
    assert pairs[0] == ("circle", "brown") and pairs[5] == ("circle", "navy") and pairs[6] == ("ellipse", "brown")
    assert pairs[59] == ("star", "navy") and pairs[60] == ("pentagon", "red") and pairs[67] == ("pentagon", "white")
    assert pairs[68] == ("pentagon", "brown") and pairs[74] == ("octagon", "red")
    assert pairs[143] == ("semicircle", "navy")


def test_pretraining_categories():
    cats = lexicon.pretraining_categories()
    things = [c for c in cats if c.isthing]
    stuff = [c for c in cats if not c.isthing]
    assert [c.id for c in things] == list(range(1, 145))
    assert [(c.name, c.supercategory) for c in things] == [(f"{c} {s}", s) for s, c in lexicon.pretraining_pairs()]
    assert things[60].name == "red pentagon" and things[0].name == "brown circle"
    assert [(c.id, c.name) for c in stuff] == [
        (145, "grass"), (146, "water"), (147, "sand"), (148, "sky"), (149, "wall"), (150, "wood")
    ]
    assert all(lexicon.stuff_id_of(c.name, "pretraining") == c.id for c in stuff)
    assert lexicon.stuff_id_of("grass") == 81  # the evaluation world's ids are unchanged
    assert len({c.id for c in cats}) == len(cats) == 150


def test_color_rgb_both_palettes():
    for name, rgb in lexicon.COLORS.items():
        assert lexicon.color_rgb(name) == rgb
    for name, rgb in lexicon.PRETRAINING_COLORS.items():
        assert lexicon.color_rgb(name) == rgb
    assert lexicon.color_rgb("red") == (210, 40, 40) and lexicon.color_rgb("brown") == (125, 80, 35)
    with pytest.raises(KeyError):
        lexicon.color_rgb("mauve")


def test_pretraining_colors_are_far_from_every_evaluation_color():
    """The design rule: a pretraining colour is >= 60 (Euclidean RGB) from each evaluation colour,
    so "evaluation shape in a new colour" is not an evaluation class with a little jitter."""
    def dist(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5

    for name, rgb in lexicon.PRETRAINING_COLORS.items():
        assert all(0 <= x <= 255 for x in rgb)
        nearest = min(lexicon.COLORS, key=lambda e: dist(rgb, lexicon.COLORS[e]))
        assert dist(rgb, lexicon.COLORS[nearest]) >= 60, (name, nearest)
    # hand check, brown (125, 80, 35) vs its nearest evaluation colour red (210, 40, 40):
    # sqrt(85^2 + 40^2 + 5^2) = sqrt(8850) = 94.07
    assert dist((125, 80, 35), (210, 40, 40)) == pytest.approx(94.07, abs=0.01)
