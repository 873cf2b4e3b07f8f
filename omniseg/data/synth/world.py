"""One synthetic scene: pixels plus every kind of supervision from the same ground truth.

A scene is a pure function of ``(cfg.seed, index)`` (its own ``numpy`` generator seeded
with both), so images can be generated in any order, in parallel, and resumed.

Drawing order: 2-3 stuff regions with procedural textures, distractor strokes in thing
colors (they are part of the stuff), then 1-8 things; later things occlude earlier ones.
Masks are the exact visible pixels; boxes are the tight boxes of those masks. Things whose
visible area falls under ``cfg.min_visible_area`` are not drawn at all (so no unlabeled
object pixels exist), which only uncovers more of the remaining things.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from omniseg.data.records import ImageRecord, Instance, Segment
from omniseg.data.synth import lexicon
from omniseg.data.synth.language import ObjectDesc, make_captions, narrative_script
from omniseg.data.synth.narrative import Mention, make_narrative
from omniseg.data.synth.shapes import rasterize_shape
from omniseg.data.synth.textures import draw_strokes, object_fill, stuff_layout, stuff_texture
from omniseg.ops.rle import rle_encode, rle_to_box

#: smallest image side the generator supports (shapes need a few pixels each)
MIN_IMAGE_SIZE = 16

#: bump when the drawing changes, so cached/resumed outputs are regenerated
GENERATOR_VERSION = 1


@dataclass
class SynthConfig:
    """Flat configuration of the synthetic world.

    Attributes:
        seed: dataset seed; image ``i`` depends only on (seed, i).
        num_images: images in the dataset.
        image_size: square image side in pixels.
        min_objects, max_objects: things sampled per image (occluded-away ones are dropped).
        min_scale, max_scale: thing size in pixels (frame diameter), log-uniform.
        min_visible_area: things with fewer visible pixels are not drawn.
        min_stuff_regions, max_stuff_regions: stuff classes per image.
        max_strokes: up to this many distractor strokes.
        color_jitter: +- per-channel jitter of an object's base color.
        min_captions, max_captions: captions per image.
        truncation: how far (in radii) an object's center may lie outside the image.
        vocabulary: ``"evaluation"``, the 80 classes of every experiment; ``"pretraining"``, the
            pretraining world (:func:`lexicon.pretraining_pairs`: no evaluation class is drawn) with
            images and instances only (no captions or narratives). Image ``i`` of a seed has the same
            layout (stuff regions, object places) in both vocabularies: pretrain on other seeds than the
            experiments' (the shipped pretraining configs use 100 / 2000 against 0 / 1000).
    """

    seed: int = 0
    num_images: int = 100
    image_size: int = 256
    min_objects: int = 1
    max_objects: int = 8
    min_scale: float = 8.0
    max_scale: float = 120.0
    min_visible_area: int = 20
    min_stuff_regions: int = 2
    max_stuff_regions: int = 3
    max_strokes: int = 6
    color_jitter: float = 30.0
    min_captions: int = 2
    max_captions: int = 5
    truncation: float = 0.5
    vocabulary: Literal["evaluation", "pretraining"] = "evaluation"

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects < 1000:  # annotation id = index * 1000 + k + 1
            raise ValueError(f"need 1 <= min_objects <= max_objects < 1000, got {self.min_objects}, {self.max_objects}")
        if self.truncation < 0 or self.min_visible_area < 1 or self.num_images < 0:
            raise ValueError("truncation must be >= 0, min_visible_area >= 1 and num_images >= 0")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
        if not 1 <= self.min_stuff_regions <= self.max_stuff_regions <= len(lexicon.STUFF_NAMES):
            raise ValueError("stuff region counts out of range")
        if not 1 <= self.min_captions <= self.max_captions:
            raise ValueError("need 1 <= min_captions <= max_captions")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {self.image_size}")


@dataclass
class Placement:
    """Where and how one thing was drawn (before occlusion)."""

    category_id: int
    shape: str
    color: str
    scale: float
    cx: float
    cy: float
    angle: float
    aspect: float

    @property
    def radius(self) -> float:
        """Frame radius passed to the rasterizer: the larger side of the frame equals ``scale``."""
        return self.scale / 2 / max(self.aspect, 1.0)

    def full_mask(self, size: int) -> np.ndarray:
        """size x size bool mask of the whole shape (before occlusion, clipped at the borders)."""
        return rasterize_shape(self.shape, self.cx, self.cy, self.radius, self.angle, self.aspect, size, size)


@dataclass
class Scene:
    """A generated scene with the ground truth that the record does not spell out.

    Attributes:
        image: H x W x 3 uint8.
        record: the ImageRecord (instances, segments, captions, narrative).
        placements: drawn things, aligned with ``record.instances``.
        stuff: stuff classes present, largest first.
        mentions: narrative phrase -> target links with their time windows.
    """

    image: np.ndarray
    record: ImageRecord
    placements: list[Placement] = field(default_factory=list)
    stuff: list[str] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)


def scene_rng(cfg: SynthConfig, index: int) -> np.random.Generator:
    """The generator of image ``index``: independent streams per (seed, index)."""
    return np.random.default_rng(np.random.SeedSequence([int(cfg.seed), int(index), GENERATOR_VERSION]))


def _place(rng: np.random.Generator, cfg: SynthConfig) -> tuple[Placement, np.ndarray]:
    size = cfg.image_size
    pairs = lexicon.pretraining_pairs() if cfg.vocabulary == "pretraining" else None
    for _ in range(20):
        if pairs is None:
            cid = int(rng.integers(1, lexicon.num_things() + 1))
            shape, color = lexicon.shape_color_of(cid)
        else:
            cid = int(rng.integers(1, len(pairs) + 1))
            shape, color = pairs[cid - 1]
        scale = float(math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale))))
        r = scale / 2
        m = cfg.truncation * r
        p = Placement(
            category_id=cid,
            shape=shape,
            color=color,
            scale=scale,
            cx=float(rng.uniform(-m, size + m)),
            cy=float(rng.uniform(-m, size + m)),
            angle=float(rng.uniform(0, 2 * math.pi)),
            aspect=float(rng.uniform(0.8, 1.25)),
        )
        mask = p.full_mask(size)
        if mask.sum() >= cfg.min_visible_area:
            return p, mask
    return p, mask  # extremely unlikely: caller drops it if too small


def _paint(rng: np.random.Generator, canvas: np.ndarray, p: Placement, mask: np.ndarray, cfg: SynthConfig) -> None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = object_fill(rng, lexicon.color_rgb(p.color), int(y1 - y0), int(x1 - x0), cfg.color_jitter)
    window = canvas[y0:y1, x0:x1]
    sub = mask[y0:y1, x0:x1]
    window[sub] = fill[sub]


def generate_scene(cfg: SynthConfig, index: int) -> Scene:
    """Generate image ``index`` of the dataset described by ``cfg`` (deterministic)."""
    rng = scene_rng(cfg, index)
    size = cfg.image_size
    # stuff
    k = int(rng.integers(cfg.min_stuff_regions, cfg.max_stuff_regions + 1))
    stuff_names = [lexicon.STUFF_NAMES[int(i)] for i in rng.choice(len(lexicon.STUFF_NAMES), k, replace=False)]
    layout = stuff_layout(rng, k, size, size)
    canvas = np.zeros((size, size, 3), np.float32)
    for r, name in enumerate(stuff_names):
        region = layout == r
        rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
        if len(rows):  # texture only the region's bounding box
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            sub = region[y0:y1, x0:x1]
            canvas[y0:y1, x0:x1][sub] = stuff_texture(rng, name, int(y1 - y0), int(x1 - x0))[sub]
    draw_strokes(rng, canvas, list(lexicon.COLORS.values()), int(rng.integers(0, cfg.max_strokes + 1)))
    # things: place all, drop the ones occluded below the visibility threshold, then paint the rest
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed = [_place(rng, cfg) for _ in range(n)]
    owner = np.full((size, size), -1, np.int32)
    for j, (_, m) in enumerate(placed):
        owner[m] = j
    visible = np.bincount(owner.ravel() + 1, minlength=len(placed) + 1)[1:]
    keep = [j for j in range(len(placed)) if visible[j] >= cfg.min_visible_area]
    placed = [placed[j] for j in keep]
    owner[:] = -1
    for j, (p, m) in enumerate(placed):
        owner[m] = j
        _paint(rng, canvas, p, m, cfg)
    # global illumination and tint, sensor noise
    canvas *= rng.uniform(0.85, 1.1) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    canvas += 3.0 * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)

    record = ImageRecord(image_id=index + 1, file_name=f"{index:07d}.png", width=size, height=size)
    objects: list[ObjectDesc] = []
    regions: dict[tuple[str, int | str], np.ndarray] = {}
    seg_id = 1
    for j, (p, _) in enumerate(placed):
        vis = owner == j
        rle = rle_encode(vis)
        box = rle_to_box(rle)
        name = f"{p.color} {p.shape}"
        record.instances.append(
            Instance(text=name, category_id=p.category_id, box=box, mask=rle, source="synth", id=index * 1000 + j + 1)
        )
        record.segments.append(Segment(text=name, category_id=p.category_id, mask=rle, is_thing=True, id=seg_id))
        seg_id += 1
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        under = layout[min(size - 1, int(cy)), min(size - 1, int(cx))]
        objects.append(ObjectDesc(j, p.shape, p.color, p.scale, (cx, cy), stuff_names[int(under)]))
        regions[("thing", j)] = vis
    present = []
    for r, name in enumerate(stuff_names):
        region = (layout == r) & (owner < 0)
        area = int(region.sum())
        if area == 0:
            continue
        present.append((area, name))
        regions[("stuff", name)] = region
        record.segments.append(
            Segment(text=name, category_id=lexicon.stuff_id_of(name, cfg.vocabulary), mask=rle_encode(region), is_thing=False, id=seg_id)
        )
        seg_id += 1
    stuff_present = [name for _, name in sorted(present, key=lambda t: -t[0])]
    # objects standing on stuff that is fully covered still say "on the <stuff>": use a present one
    for o in objects:
        if o.stuff not in stuff_present:
            o.stuff = stuff_present[0] if stuff_present else o.stuff
    mentions: list[Mention] = []
    if objects and cfg.vocabulary == "evaluation":
        n_cap = int(rng.integers(cfg.min_captions, cfg.max_captions + 1))
        record.captions = make_captions(rng, objects, stuff_present, size, n_cap)
        script = narrative_script(rng, objects, stuff_present, size)
        narrative, mentions = make_narrative(rng, script, regions, size, size)
        record.narratives = [narrative]
    return Scene(image=image, record=record, placements=[p for p, _ in placed], stuff=stuff_present, mentions=mentions)


def generate_image(cfg: SynthConfig, index: int) -> tuple[np.ndarray, ImageRecord]:
    """Image ``index`` (H x W x 3 uint8) and its ImageRecord; deterministic per (seed, index)."""
    scene = generate_scene(cfg, index)
    return scene.image, scene.record
