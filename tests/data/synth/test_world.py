from __future__ import annotations

import re

import numpy as np
import pytest

from omniseg.data.synth import lexicon
from omniseg.data.synth.world import Scene, SynthConfig, generate_image, generate_scene
from omniseg.ops.rle import rle_decode

CFG = SynthConfig(seed=3, num_images=20)
N_SCENES = 16


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [generate_scene(CFG, i) for i in range(N_SCENES)]


def ref_tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_deterministic_and_independent():
    img_a, rec_a = generate_image(CFG, 5)
    img_b, rec_b = generate_image(CFG, 5)
    np.testing.assert_array_equal(img_a, img_b)
    assert rec_a == rec_b
    # other indices generated before, another dataset size: same image 5
    generate_image(CFG, 4)
    img_c, rec_c = generate_image(SynthConfig(seed=3, num_images=7), 5)
    np.testing.assert_array_equal(img_a, img_c)
    assert rec_a == rec_c
    img_d, _ = generate_image(SynthConfig(seed=4), 5)
    img_e, _ = generate_image(CFG, 6)
    assert not np.array_equal(img_a, img_d) and not np.array_equal(img_a, img_e)


def test_image_and_record_basics(scenes):
    for i, s in enumerate(scenes):
        r = s.record
        assert s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8
        assert (r.width, r.height) == (256, 256) and r.image_id == i + 1
        assert 1 <= len(r.instances) <= 8
        assert 2 <= len(r.captions) <= 5
        assert len(r.narratives) == 1
        for inst in r.instances:
            assert inst.source == "synth" and inst.box_quality == "exact"
            assert inst.text == lexicon.class_names()[inst.category_id - 1]
        ids = [inst.id for inst in r.instances]
        assert len(set(ids)) == len(ids)


def test_masks_exact_boxes_tight_and_disjoint(scenes):
    for s in scenes:
        union = np.zeros((256, 256), np.int32)
        for inst in s.record.instances:
            m = rle_decode(inst.mask).astype(bool)
            assert m.sum() >= CFG.min_visible_area
            assert inst.box == ref_tight_box(m)
            union += m
        assert union.max() <= 1  # instances never overlap


def test_panoptic_segments_partition_the_image(scenes):
    for s in scenes:
        r = s.record
        cover = np.zeros((256, 256), np.int32)
        things = [seg for seg in r.segments if seg.is_thing]
        stuff = [seg for seg in r.segments if not seg.is_thing]
        assert [seg.mask for seg in things] == [inst.mask for inst in r.instances]
        assert 1 <= len(stuff) <= 3
        for seg in stuff:
            assert seg.text in lexicon.STUFF_NAMES and seg.category_id == lexicon.stuff_id_of(seg.text)
        for seg in r.segments:
            cover += rle_decode(seg.mask)
        np.testing.assert_array_equal(cover, np.ones_like(cover))
        assert len({seg.id for seg in r.segments}) == len(r.segments)


def test_occlusion_visible_part(scenes):
    """Visible mask of object j == its full shape minus every later object's full shape."""
    seen_occluded = False
    for s in scenes:
        full = [p.full_mask(256) for p in s.placements]
        for j, inst in enumerate(s.record.instances):
            later = np.zeros((256, 256), bool)
            for m in full[j + 1:]:
                later |= m
            expected = full[j] & ~later
            np.testing.assert_array_equal(rle_decode(inst.mask).astype(bool), expected)
            seen_occluded |= bool((full[j] & later).any())
    assert seen_occluded, "no occlusion in the sample; the check above would be vacuous"


def test_scale_range_and_truncation(scenes):
    truncated = 0
    for s in scenes:
        for p in s.placements:
            assert CFG.min_scale <= p.scale <= CFG.max_scale
            m = p.full_mask(256)
            x0, y0, x1, y1 = ref_tight_box(m)
            assert max(x1 - x0, y1 - y0) <= p.scale + 2
            on_border = x0 == 0 or y0 == 0 or x1 == 256 or y1 == 256
            truncated += on_border
            if not on_border:
                assert max(x1 - x0, y1 - y0) >= 0.5 * p.scale - 2
    assert truncated > 0


def test_counts_cover_range():
    cfg = SynthConfig(seed=1, image_size=48, min_scale=4, max_scale=16)
    counts = {len(generate_image(cfg, i)[1].instances) for i in range(60)}
    assert counts <= set(range(1, 9)) and {1, 8} <= counts


def test_narrative_times_monotonic(scenes):
    for s in scenes:
        n = s.record.narratives[0]
        starts = [u.start_time for u in n.timed_caption]
        assert all(u.start_time <= u.end_time for u in n.timed_caption)
        assert starts == sorted(starts)
        assert all(a.end_time <= b.start_time for a, b in zip(n.timed_caption, n.timed_caption[1:]))
        ts = [p.t for seg in n.traces for p in seg]
        assert all(b > a for a, b in zip(ts, ts[1:]))
        gaps = np.diff([p.t for p in n.traces[0]])
        assert gaps.min() >= 0.02 - 1e-3 and gaps.max() <= 0.05 + 1e-3
        assert all(-0.05 <= p.x <= 1.05 and -0.05 <= p.y <= 1.05 for seg in n.traces for p in seg)
        # utterances are the caption's words in order
        words = re.sub(r"[.,]", "", n.caption).split()
        assert " ".join(u.utterance for u in n.timed_caption).split() == words


def test_trace_follows_mentioned_objects(scenes):
    fractions, enclosed = [], []
    for s in scenes:
        r = s.record
        pts = [(p.x * r.width, p.y * r.height, p.t) for seg in r.narratives[0].traces for p in seg]
        mentioned = set()
        for m in s.mentions:
            if m.target[0] != "thing":
                continue
            mentioned.add(m.target[1])
            x0, y0, x1, y1 = r.instances[m.target[1]].box
            pad = 0.25 * max(x1 - x0, y1 - y0) + 4
            win = [(x, y) for x, y, t in pts if m.start_time <= t <= m.end_time]
            assert win, "no trace point while the phrase is spoken"
            inside = [x0 - pad <= x <= x1 + pad and y0 - pad <= y <= y1 + pad for x, y in win]
            fractions.append(np.mean(inside))
            xs, ys = [p[0] for p in win], [p[1] for p in win]
            enclosed.append(min(xs) <= x0 and min(ys) <= y0 and max(xs) >= x1 and max(ys) >= y1)
            # the phrase names the object: its last word is a word of its shape or a hypernym
            shape, color = lexicon.shape_color_of(r.instances[m.target[1]].category_id)
            assert any(m.phrase.endswith(w) for w in lexicon.shape_words(shape) + list(lexicon.HYPERNYMS))
            assert any(w in m.phrase.split() for w in lexicon.color_words(color))
        assert mentioned == set(range(len(r.instances)))
        assert any(m.target[0] == "stuff" for m in s.mentions)
    assert min(fractions) >= 0.7 and np.mean(fractions) >= 0.9
    # approximate, as in the ALP paper: trace boxes usually do not fully enclose the object
    assert np.mean(enclosed) < 0.5


def test_captions_use_synonyms_and_are_true(scenes):
    color_word = {w: c for c in lexicon.COLORS for w in lexicon.color_words(c)}
    synonym_used = hypernym_used = False
    for s in scenes:
        present_colors = {lexicon.shape_color_of(i.category_id)[1] for i in s.record.instances}
        for cap in s.record.captions:
            words = cap.split()
            for w in words:
                if w in color_word:
                    assert color_word[w] in present_colors, (cap, present_colors)
            synonym_used |= any(w in color_word and w != color_word[w] for w in words)
            hypernym_used |= any(w.rstrip("s") in lexicon.HYPERNYMS for w in words)
        count_caps = [c for c in s.record.captions if "lying on" in c]
        for c in count_caps:
            n = len(s.record.instances)
            assert c.startswith(("one", "two", "three", "four", "five", "six", "seven", "eight")[n - 1] + " ")
    assert synonym_used and hypernym_used


def _best_threshold_error(a: np.ndarray, b: np.ndarray) -> float:
    """Lowest balanced error of any single-channel threshold classifier between pixel sets."""
    best = 0.5
    for c in range(3):
        for th in range(0, 257, 4):
            e = 0.5 * ((a[:, c] >= th).mean() + (b[:, c] < th).mean())
            best = min(best, e, 1 - e)
    return best


def test_not_color_threshold_separable(scenes):
    fg, bg, stds = [], [], []
    for s in scenes:
        img = s.image.reshape(-1, 3)
        union = np.zeros(img.shape[0], bool)
        for inst in s.record.instances:
            m = rle_decode(inst.mask).reshape(-1).astype(bool)
            union |= m
            if m.sum() >= 200:
                stds.append(img[m].astype(float).std(0).max())
        fg.append(img[union])
        bg.append(img[~union])
    err = _best_threshold_error(np.concatenate(fg), np.concatenate(bg))
    assert err > 0.2, f"objects separable from background by one threshold (error {err:.3f})"
    assert np.median(stds) > 8.0, "object colors are too flat"


def test_config_validation():
    with pytest.raises(ValueError):
        SynthConfig(min_objects=0)
    with pytest.raises(ValueError):
        SynthConfig(min_objects=5, max_objects=2)
    with pytest.raises(ValueError):
        SynthConfig(min_scale=0)
    with pytest.raises(ValueError):
        SynthConfig(max_stuff_regions=9)
    with pytest.raises(ValueError):
        SynthConfig(max_objects=1000)
    with pytest.raises(ValueError):
        SynthConfig(min_visible_area=0)


def test_small_image_size_works():
    img, rec = generate_image(SynthConfig(image_size=32, min_scale=4, max_scale=20), 0)
    assert img.shape == (32, 32, 3) and rec.width == 32 and len(rec.instances) >= 1


def test_image_covered_by_things_still_has_language():
    # huge objects on a tiny canvas: no stuff is visible, captions / narrative must not mention any
    cfg = SynthConfig(image_size=16, min_scale=100, max_scale=120, min_objects=8, truncation=0.0)
    for i in range(3):
        s = generate_scene(cfg, i)
        assert s.stuff == [] and not any(not seg.is_thing for seg in s.record.segments)
        assert 2 <= len(s.record.captions) <= 5
        stuff_words = {w for name in lexicon.STUFF_NAMES for w in lexicon.synonyms_of(name) + [name]}
        for text in s.record.captions + [s.record.narratives[0].caption]:
            assert not stuff_words & set(text.replace(".", "").split()), text
        assert all(m.target[0] == "thing" for m in s.mentions)


def test_trace_sweeps_over_mentioned_stuff(scenes):
    from scipy.ndimage import binary_dilation

    fractions = []
    for s in scenes:
        r = s.record
        pts = [p for seg in r.narratives[0].traces for p in seg]
        regions = {seg.text: rle_decode(seg.mask).astype(bool) for seg in r.segments if not seg.is_thing}
        for m in s.mentions:
            if m.target[0] != "stuff":
                continue
            near = binary_dilation(regions[m.target[1]], iterations=4)
            win = [p for p in pts if m.start_time <= p.t <= m.end_time]
            rows = [min(255, max(0, int(p.y * 256))) for p in win]
            cols = [min(255, max(0, int(p.x * 256))) for p in win]
            fractions.append(near[rows, cols].mean())
    assert len(fractions) >= N_SCENES
    assert min(fractions) >= 0.4 and np.mean(fractions) >= 0.8


PRETRAIN_CFG = SynthConfig(seed=7, num_images=20, vocabulary="pretraining")


def test_pretraining_world_draws_no_evaluation_class():
    evaluation = set(lexicon.class_names())
    names = {c.id: c.name for c in lexicon.pretraining_categories()}
    stuff_ids = {lexicon.stuff_id_of(s, "pretraining") for s in lexicon.STUFF_NAMES}
    shapes, colors = set(), set()
    for i in range(20):
        s = generate_scene(PRETRAIN_CFG, i)
        r = s.record
        assert r.instances and r.captions == [] and r.narratives == [] and s.mentions == []
        for inst in r.instances:
            assert inst.text not in evaluation and 1 <= inst.category_id <= 144
            assert names[inst.category_id] == inst.text
            color, _, shape = inst.text.partition(" ")
            shapes.add(shape)
            colors.add(color)
        for seg in r.segments:
            assert seg.text not in evaluation
            if seg.is_thing:
                assert names[seg.category_id] == seg.text
            else:
                assert seg.category_id in stuff_ids and names[seg.category_id] == seg.text
        for p in s.placements:
            assert (p.shape, p.color) in lexicon.pretraining_pairs()
    # both halves of the vocabulary are drawn: new shapes, and evaluation shapes in new colours
    assert shapes & set(lexicon.PRETRAINING_SHAPES) and shapes & set(lexicon.SHAPES)
    assert colors & set(lexicon.PRETRAINING_COLORS) and colors & set(lexicon.COLORS)


# sha256 of generate_image(SynthConfig(seed=0, num_images=3), i)[0].tobytes() for i = 0, 1, 2, computed
# with the code before the pretraining world was added (issue 12): adding it must not move the
# evaluation world by a single pixel (every experiment's data would change otherwise)
EVALUATION_IMAGE_SHA256 = (
    "f30f252bff0db84573fd349d7d287ee1b92796be072b5a259ed4fdf1c69e3e7d",
    "5c2fd10b01470e140a1f5deb1d7250e6802ade1e690a3d3e6eb50d760bd04e42",
    "3c0a5d364004d13a091a9e8bc5a09a8e33ead2afa6e1f76d2ffeb7cb32096beb",
)
# the same for the language and labels: json.dumps([captions, narrative captions, instances'
# (category id, box, text)]) of each record
EVALUATION_RECORD_SHA256 = (
    "9b2251432636874a31941076485f8eff84da48704d2c046857c96829dcbe6d29",
    "02051b116ca4f89271dbc9413772d12794e6a5e0ca7d2c650e320f596bf1a706",
    "1cec6127f1a6efd342d27b63135e29ba96cd96911c582dae8c8c6375402ef754",
)


def test_evaluation_world_is_pinned():
    import hashlib
    import json

    for i in range(3):
        img, rec = generate_image(SynthConfig(seed=0, num_images=3), i)
        img_e, rec_e = generate_image(SynthConfig(seed=0, num_images=3, vocabulary="evaluation"), i)
        np.testing.assert_array_equal(img, img_e)
        assert rec == rec_e
        assert hashlib.sha256(img.tobytes()).hexdigest() == EVALUATION_IMAGE_SHA256[i]
        lang = json.dumps([rec.captions, [n.caption for n in rec.narratives],
                           [(x.category_id, list(x.box), x.text) for x in rec.instances]])
        assert hashlib.sha256(lang.encode()).hexdigest() == EVALUATION_RECORD_SHA256[i]
        img_p, _ = generate_image(SynthConfig(seed=0, num_images=3, vocabulary="pretraining"), i)
        assert not np.array_equal(img, img_p)
