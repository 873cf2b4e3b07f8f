from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from omniseg.data.errors import BadRecordError
from omniseg.data.records import Category, ImageRecord, Instance, Narrative, RecordSet, Segment
from omniseg.data.splits import (
    COCO_VOC_NAMES,
    COCO_ZSD_BASE,
    COCO_ZSD_NOVEL,
    SPLITS,
    Split,
    UnknownSplitError,
    apply_split,
    attribute_object,
    compositional,
    random_split,
    split_from_file,
    voc_like,
    zsd_like,
)
from omniseg.data.synth import lexicon
from omniseg.errors import UserError
from omniseg.ops.rle import rle_encode

CATS = lexicon.categories()
THING_IDS = set(range(1, 81))

COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
COCO_CATS = [Category(id=i + 1, name=n.replace("_", " ")) for i, n in enumerate(COCO_NAMES)]


def check_partition(split: Split, ids: set[int]) -> None:
    b, n, g = set(split.base_ids), set(split.novel_ids), set(split.ignored_ids)
    assert not (b & n) and not (b & g) and not (n & g)
    assert b | n | g == ids
    assert set(split.train_supervision) == b | n


def test_voc_like_synth():
    s = voc_like(CATS, seed=0, novel_supervision="alp")
    assert (len(s.base_ids), len(s.novel_ids), len(s.ignored_ids)) == (20, 60, 0)
    check_partition(s, THING_IDS)
    assert all(s.train_supervision[i] == "mask" for i in s.base_ids)
    assert all(s.train_supervision[i] == "alp" for i in s.novel_ids)
    assert voc_like(CATS, seed=0, novel_supervision="alp") == s
    assert voc_like(CATS, seed=1).base_ids != s.base_ids
    assert s.group_of(s.base_ids[0]) == "base" and s.group_of(s.novel_ids[0]) == "novel"
    with pytest.raises(ValueError, match="not in the split"):
        s.group_of(81)  # stuff is outside every split


def test_voc_like_coco_uses_voc_classes():
    assert len(COCO_CATS) == 80 and len(COCO_VOC_NAMES) == 20
    s = voc_like(COCO_CATS, seed=5)
    names = {c.id: c.name for c in COCO_CATS}
    assert {names[i] for i in s.base_ids} == set(COCO_VOC_NAMES)
    check_partition(s, set(range(1, 81)))


def test_zsd_like():
    s = zsd_like(CATS, seed=2, novel_supervision="caption")
    assert (len(s.base_ids), len(s.novel_ids), len(s.ignored_ids)) == (48, 17, 15)
    check_partition(s, THING_IDS)
    assert s.group_of(s.ignored_ids[0]) == "ignored"
    c = zsd_like(COCO_CATS)
    names = {cat.id: cat.name for cat in COCO_CATS}
    assert len(COCO_ZSD_BASE) == 48 and len(COCO_ZSD_NOVEL) == 17
    assert not set(COCO_ZSD_BASE) & set(COCO_ZSD_NOVEL)
    assert {names[i] for i in c.base_ids} == set(COCO_ZSD_BASE)
    assert {names[i] for i in c.novel_ids} == set(COCO_ZSD_NOVEL)
    assert len(c.ignored_ids) == 15
    with pytest.raises(ValueError, match="at least 65"):
        zsd_like(CATS[:40])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_compositional(seed):
    s = compositional(CATS, seed=seed)
    check_partition(s, THING_IDS)
    assert len(s.novel_ids) == 20
    base_attrs = [lexicon.shape_color_of(i) for i in s.base_ids]
    for shape in lexicon.SHAPES:
        assert sum(a[0] == shape for a in base_attrs) >= 2
    for color in lexicon.COLORS:
        assert sum(a[1] == color for a in base_attrs) >= 2
    # every novel class is an unseen combination of a seen shape and a seen color
    seen_shapes = {a[0] for a in base_attrs}
    seen_colors = {a[1] for a in base_attrs}
    for i in s.novel_ids:
        shape, color = lexicon.shape_color_of(i)
        assert shape in seen_shapes and color in seen_colors and (shape, color) not in base_attrs


def test_compositional_errors():
    with pytest.raises(ValueError, match="could hold out only"):
        compositional(CATS, num_novel=70)
    with pytest.raises(ValueError, match="'person' is not a compositional class name"):
        compositional(COCO_CATS)
    with pytest.raises(ValueError, match="not a compositional class name"):
        attribute_object("big red ring")
    assert attribute_object("red ring") == ("red", "ring")


def test_compositional_reads_vocabularies_from_names():
    # not the synthetic lexicon: any "<attribute> <object>" names
    names = [f"{a} {o}" for o in ("car", "cup", "dog", "hat") for a in ("old", "new", "big", "wet")]
    cats = [Category(id=i + 1, name=n) for i, n in enumerate(names)]
    s = compositional(cats, seed=0, num_novel=4, min_base_per_attribute=2)
    check_partition(s, set(range(1, 17)))
    base = [attribute_object(names[i - 1]) for i in s.base_ids]
    for i in s.novel_ids:
        a, o = attribute_object(names[i - 1])
        assert sum(b[0] == a for b in base) >= 2 and sum(b[1] == o for b in base) >= 2


# Literal ids per named split and seed on the synthetic world, pinned so that changes to the
# split code provably leave the splits (and every number reported on them) unchanged.
PINNED = {
    ("compositional", 0): (5, 6, 9, 10, 12, 14, 17, 20, 21, 24, 37, 45, 51, 53, 54, 65, 66, 67, 75, 76),
    ("compositional", 1): (7, 15, 16, 17, 18, 21, 28, 32, 35, 36, 39, 48, 53, 56, 57, 61, 64, 68, 71, 76),
    ("voc-like", 0): (5, 6, 9, 10, 12, 14, 17, 20, 21, 24, 37, 45, 51, 53, 54, 65, 66, 67, 75, 76),
    ("zsd-like", 0): (13, 15, 16, 26, 27, 33, 38, 41, 47, 50, 56, 59, 69, 73, 74, 77, 78),
}


@pytest.mark.parametrize("name,seed", sorted(PINNED))
def test_named_splits_pinned_ids(name, seed):
    s = SPLITS[name](CATS, seed=seed)
    # compositional / zsd-like: the novel ids; voc-like: its 20 base ids
    assert (s.base_ids if name == "voc-like" else s.novel_ids) == PINNED[name, seed]
    if name == "zsd-like":
        assert s.ignored_ids == (8, 30, 32, 34, 39, 42, 49, 55, 57, 60, 64, 70, 71, 72, 80)


def test_compositional_pinned_ids_with_skips():
    # 40 of 80 held out: some drawn combinations are skipped to keep 2 base classes per attribute
    s = compositional(CATS, seed=0, num_novel=40)
    assert s.novel_ids == (
        2, 3, 5, 6, 9, 10, 11, 12, 14, 17, 18, 19, 20, 21, 24, 28, 29, 31, 35, 36,
        37, 40, 44, 45, 48, 51, 52, 53, 54, 58, 61, 62, 63, 65, 66, 67, 68, 75, 76, 79,
    )
    assert s.novel_ids != random_split(CATS, 40, seed=0).base_ids


def test_random_split_and_registry():
    s = random_split(CATS, num_base=30, seed=3, num_novel=40)
    check_partition(s, THING_IDS)
    assert (len(s.base_ids), len(s.novel_ids), len(s.ignored_ids)) == (30, 40, 10)
    assert random_split(CATS, 30, seed=3, num_novel=40) == s
    with pytest.raises(ValueError):
        random_split(CATS, num_base=90)
    with pytest.raises(ValueError, match="novel_supervision"):
        random_split(CATS, 10, novel_supervision="mask")
    with pytest.raises(ValueError, match="novel_supervision"):
        voc_like(CATS, novel_supervision="pixels")
    for name, build in SPLITS.items():
        sp = build(CATS, seed=0, novel_supervision="box")
        assert sp.name == name
        check_partition(sp, THING_IDS)


def test_split_validation():
    with pytest.raises(ValueError, match="disjoint"):
        Split("x", (1, 2), (2,), (), {1: "mask", 2: "box"})
    with pytest.raises(ValueError, match="supervision"):
        Split("x", (1,), (2,), (), {1: "mask"})
    with pytest.raises(ValueError, match="outside"):
        Split("x", (1,), (), (3,), {1: "mask", 3: "box"})


def _mask(h: int, w: int, box: tuple[int, int, int, int]) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = 1
    return rle_encode(m)


def _toy() -> RecordSet:
    """One image with a base, a novel and an ignored instance, a free phrase, thing + stuff segments."""
    cats = [Category(1, "a"), Category(2, "b"), Category(3, "c"), Category(4, "sky", isthing=False)]
    m1, m2, m3 = _mask(8, 8, (0, 0, 2, 2)), _mask(8, 8, (3, 3, 5, 5)), _mask(8, 8, (6, 6, 8, 8))
    rec = ImageRecord(
        image_id=1, file_name="x.png", width=8, height=8,
        instances=[
            Instance("a", 1, (0, 0, 2, 2), mask=m1, id=1),
            Instance("b", 2, (3, 3, 5, 5), mask=m2, id=2),
            Instance("b", 2, None, mask=m2, id=5),  # mask-only novel instance
            Instance("c", 3, (6, 6, 8, 8), mask=m3, id=3),
            Instance("a red thing", None, (1, 1, 4, 4), box_quality="approximate", id=4),
        ],
        captions=["a b and c"],
        narratives=[Narrative(caption="a b c")],
        segments=[Segment("a", 1, m1, is_thing=True), Segment("b", 2, m2, is_thing=True),
                  Segment("c", 3, m3, is_thing=True), Segment("sky", 4, _mask(8, 8, (0, 4, 8, 8)))],
    )
    return RecordSet([rec], cats, name="toy")


@pytest.mark.parametrize("kind", ["box", "alp", "caption", "none"])
def test_apply_split_training_view(kind):
    rs = _toy()
    before = copy.deepcopy(rs)
    split = Split("t", (1,), (2,), (3,), {1: "mask", 2: kind})
    out = apply_split(rs, split)
    assert rs == before  # input untouched
    rec, src = out.records[0], rs.records[0]
    by_id = {i.id: i for i in rec.instances}
    assert by_id[1] == src.instances[0]  # base untouched
    assert 3 not in by_id  # ignored removed
    assert by_id[4] == src.instances[4]  # free phrase kept
    if kind == "box":
        assert by_id[2].mask is None and by_id[2].box == (3, 3, 5, 5) and by_id[2].box_quality == "exact"
        assert by_id[5].mask is None and by_id[5].box == (3.0, 3.0, 5.0, 5.0)  # box from the exact mask
    else:
        assert 2 not in by_id and 5 not in by_id
    assert [s.text for s in rec.segments] == ["a", "sky"]  # novel/ignored thing masks never leak
    assert rec.captions == src.captions and rec.narratives == src.narratives
    # never stronger: no output instance has a mask / box the input did not have
    for inst in rec.instances:
        orig = next(i for i in src.instances if i.id == inst.id)
        assert inst.mask is None or inst.mask == orig.mask
        assert inst.box is None or orig.box is not None or orig.mask is not None


def test_apply_split_unknown_category():
    rs = _toy()
    with pytest.raises(ValueError, match=r"image 1: instance #0 \(id=1\): category 1"):
        apply_split(rs, Split("t", (2,), (3,), (), {2: "mask", 3: "box"}))


def test_apply_split_on_synth_records():
    from omniseg.data.synth.world import SynthConfig, generate_image

    cfg = SynthConfig(seed=0, image_size=64, min_scale=6, max_scale=30)
    rs = RecordSet([generate_image(cfg, i)[1] for i in range(6)], CATS)
    split = compositional(CATS, seed=0, novel_supervision="box")
    out = apply_split(rs, split)
    n_novel = 0
    for a, b in zip(rs.records, out.records):
        want = [(i.id, split.group_of(i.category_id)) for i in a.instances]
        assert [i.id for i in b.instances] == [i for i, _ in want]  # no ignored classes in this split
        for inst in b.instances:
            g = split.group_of(inst.category_id)
            assert (inst.mask is not None) == (g == "base")
            n_novel += g == "novel"
    assert sum(len(r.instances) for r in out.records) == sum(len(r.instances) for r in rs.records)
    assert n_novel > 0


# ---------------------------------------------------------------- no silent fallback, split files

OWN = [Category(id=i, name=n) for i, n in ((3, "apple"), (5, "pear"), (7, "plum"), (9, "fig"))] + [
    Category(id=20, name="grass", isthing=False)]


@pytest.mark.parametrize("name", ["voc-like", "zsd-like"])
def test_named_split_on_other_class_names_is_an_error(name):
    """Before: voc-like on non-COCO names silently became a random 25% base split."""
    with pytest.raises(UnknownSplitError) as e:
        SPLITS[name](OWN, seed=0)
    assert str(e.value) == (
        f"split {name!r} is defined for the COCO class names and the synthetic world, not for these 4 classes "
        "('apple', 'pear', 'plum', ...); choose: a split file with your base / novel classes "
        '(data.split_file=FILE.json holding {"base": [names or ids], "novel": [...]}), '
        "'compositional' (names '<attribute> <object>') or no split (data.split='')")
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    partial_coco = [c for c in COCO_CATS if c.name != "person"]  # not every VOC / ZSD name: not COCO
    with pytest.raises(UnknownSplitError):
        SPLITS[name](partial_coco)


def test_voc_like_on_the_pretraining_world_still_draws_a_quarter():
    things = [c for c in lexicon.pretraining_categories() if c.isthing]
    s = voc_like(lexicon.pretraining_categories(), seed=0)
    assert len(s.base_ids) == round(len(things) / 4) and len(s.novel_ids) == len(things) - len(s.base_ids)


def _split_file(tmp_path, obj) -> str:
    p = tmp_path / "my_split.json"
    p.write_text(json.dumps(obj))
    return str(p)


def test_split_file_names_and_ids(tmp_path):
    s = split_from_file(_split_file(tmp_path, {"base": ["pear", 9]}), OWN, novel_supervision="alp")
    assert (s.name, s.base_ids, s.novel_ids, s.ignored_ids) == ("my_split.json", (5, 9), (3, 7), ())
    assert s.train_supervision == {3: "alp", 5: "mask", 7: "alp", 9: "mask"}
    # with a novel list, classes in neither list are ignored
    s = split_from_file(_split_file(tmp_path, {"base": ["apple"], "novel": [7]}), OWN)
    assert (s.base_ids, s.novel_ids, s.ignored_ids) == ((3,), (7,), (5, 9))
    assert s.train_supervision == {3: "mask", 7: "box"}


@pytest.mark.parametrize("obj, where, why", [
    ({"base": ["apple", "peer"]}, "base[1]", "'peer' is not a category name of the dataset (did you mean 'pear'?)"),
    ({"base": ["zebra"]}, "base[0]", "'zebra' is not a category name of the dataset (e.g. 'apple', 'pear', 'plum')"),
    ({"base": [4]}, "base[0]", "4 is not a category id of the dataset (thing ids 3..9)"),
    ({"base": ["grass"]}, "base[0]", "'grass' is a stuff category; a split holds thing classes"),
    ({"base": [3], "novel": ["apple"]}, "novel[0]", "'apple' is listed twice (already in base)"),
    ({"base": [True]}, "base[0]", "True is not a category name or integer id"),
    ({"base": "apple"}, "base", "must be a list of category names or ids, got str"),
    ({"base": [], "nvel": []}, "key 'nvel'", 'unknown key; a split file is {"base": [names or ids], '
                                            '"novel": [names or ids]}'),
    ({"novel": [3]}, "file", 'no "base" list (the classes that keep their masks); expected {"base": '
                             '[names or ids], "novel": [names or ids]}'),
    (["apple"], "file", 'a split file is a JSON object {"base": [names or ids], "novel": [names or ids]}'),
])
def test_split_file_errors_name_the_file_and_entry(tmp_path, obj, where, why):
    path = _split_file(tmp_path, obj)
    with pytest.raises(BadRecordError) as e:
        split_from_file(path, OWN)
    assert str(e.value) == f"{path}: {where}: {why}"


def test_split_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        split_from_file(tmp_path / "nope.json", OWN)
