"""Vocabulary of the synthetic world: thing classes (shape x color), stuff classes, wording.

Thing categories are every combination of :data:`SHAPES` and :data:`COLORS`, named
``"<color> <shape>"`` ("red ring"). Category id = index in :func:`class_names` + 1, ordered
shape-major (all colors of the first shape, then the next shape). Stuff categories follow
the things (ids N+1 ...), with ``isthing=False``.

Captions and narratives do not always use the class name: they draw from synonym lists
(``"crimson disk"`` for "red circle") and hypernyms (``"shape"``, ``"object"``), so that
open-vocabulary matching is needed to connect text to classes, as in the real captions /
narratives the papers learn from.
"""

from __future__ import annotations

import functools

from omniseg.data.records import Category

#: thing shapes, in id order. Several have masks far from a filled box (ring, crescent, cross, star).
SHAPES: tuple[str, ...] = (
    "circle",
    "ellipse",
    "square",
    "triangle",
    "diamond",
    "hexagon",
    "ring",
    "crescent",
    "cross",
    "star",
)

#: thing colors, in id order, with their nominal RGB value (jittered when drawn).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "orange": (235, 135, 30),
    "yellow": (230, 210, 50),
    "green": (60, 170, 60),
    "blue": (45, 80, 210),
    "purple": (130, 55, 170),
    "pink": (235, 120, 175),
    "white": (235, 235, 235),
}

#: other words for each shape (captions pick among the name and these).
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disk", "disc", "round blob"),
    "ellipse": ("oval", "egg shape"),
    "square": ("block", "box"),
    "triangle": ("wedge", "trigon"),
    "diamond": ("rhombus", "lozenge"),
    "hexagon": ("hex", "six-sided shape"),
    "ring": ("hoop", "annulus", "donut"),
    "crescent": ("moon", "sickle"),
    "cross": ("plus sign", "plus"),
    "star": ("five-pointed star", "starburst"),
}

#: other words for each color.
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "orange": ("amber", "tangerine"),
    "yellow": ("golden", "lemon"),
    "green": ("emerald", "lime"),
    "blue": ("azure", "cobalt"),
    "purple": ("violet", "plum"),
    "pink": ("rose", "salmon"),
    "white": ("ivory", "snowy"),
}

#: words that name any thing (used with or without a color: "a red shape", "an object").
HYPERNYMS: tuple[str, ...] = ("shape", "object", "thing", "figure")

#: shapes and colors only the pretraining world draws (issue 12, ``omniseg pretrain``). Its classes are
#: every (shape, color) pair of SHAPES + PRETRAINING_SHAPES and COLORS + PRETRAINING_COLORS except the 80
#: evaluation pairs: a backbone pretrained there has seen no pixel labelled with an evaluation class.
PRETRAINING_SHAPES: tuple[str, ...] = ("pentagon", "octagon", "trapezoid", "arrow", "heart", "semicircle")

#: nominal RGB of the pretraining-only colors (each at least ~60 apart from every evaluation color).
PRETRAINING_COLORS: dict[str, tuple[int, int, int]] = {
    "brown": (125, 80, 35),
    "cyan": (40, 205, 215),
    "grey": (128, 128, 128),
    "black": (30, 30, 30),
    "teal": (10, 120, 110),
    "navy": (25, 30, 105),
}

#: stuff classes (background regions), in id order after the things.
STUFF_NAMES: tuple[str, ...] = ("grass", "water", "sand", "sky", "wall", "wood")

#: other words for each stuff class.
STUFF_SYNONYMS: dict[str, tuple[str, ...]] = {
    "grass": ("lawn", "turf"),
    "water": ("lake", "sea"),
    "sand": ("beach", "dune"),
    "sky": ("clouds", "air"),
    "wall": ("bricks", "plaster"),
    "wood": ("planks", "timber"),
}


def class_names() -> list[str]:
    """All thing class names, ``"<color> <shape>"``, shape-major; category id = index + 1."""
    return [f"{color} {shape}" for shape in SHAPES for color in COLORS]


def num_things() -> int:
    return len(SHAPES) * len(COLORS)


def split_name(name: str) -> tuple[str, str]:
    """``"red ring"`` -> ``("red", "ring")``. Raises ValueError for a name not in the lexicon."""
    color, _, shape = name.partition(" ")
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"{name!r} is not a synthetic thing class '<color> <shape>'")
    return color, shape


def category_id_of(color: str, shape: str) -> int:
    """Category id (1-based) of a color/shape pair."""
    return SHAPES.index(shape) * len(COLORS) + list(COLORS).index(color) + 1


def shape_color_of(category_id: int) -> tuple[str, str]:
    """Inverse of :func:`category_id_of`: id -> ``(shape, color)``. Raises for stuff / bad ids."""
    if not 1 <= category_id <= num_things():
        raise ValueError(f"category id {category_id} is not a synthetic thing class")
    i = category_id - 1
    return SHAPES[i // len(COLORS)], list(COLORS)[i % len(COLORS)]


def stuff_id_of(stuff: str, vocabulary: str = "evaluation") -> int:
    """Category id of a stuff class (after all things of the world's ``vocabulary``)."""
    things = num_things() if vocabulary == "evaluation" else len(pretraining_pairs())
    return things + STUFF_NAMES.index(stuff) + 1


def color_words(color: str) -> list[str]:
    """The color's name followed by its synonyms."""
    return [color, *COLOR_SYNONYMS[color]]


def shape_words(shape: str) -> list[str]:
    """The shape's name followed by its synonyms."""
    return [shape, *SHAPE_SYNONYMS[shape]]


def synonyms_of(name: str) -> list[str]:
    """Other phrasings of a thing or stuff class, excluding ``name`` itself.

    Things: every ``"<color word> <shape word>"`` combination of the color's and shape's
    names and synonyms ("crimson disk", "red disk", "scarlet circle", ...). Stuff: the
    stuff synonyms. Hypernym phrasings ("red shape") are not synonyms (they name many
    classes); see :func:`hypernym_phrases_of`.
    """
    if name in STUFF_SYNONYMS:
        return list(STUFF_SYNONYMS[name])
    color, shape = split_name(name)
    out = [f"{c} {s}" for c in color_words(color) for s in shape_words(shape)]
    return [p for p in out if p != name]


def hypernym_phrases_of(name: str) -> list[str]:
    """Vaguer phrasings that still fit the class: ``"red shape"``, ``"crimson object"``, ..."""
    color, _ = split_name(name)
    return [f"{c} {h}" for c in color_words(color) for h in HYPERNYMS]


def categories() -> list[Category]:
    """Things (ids 1..N, supercategory = shape) then stuff (ids N+1.., ``isthing=False``)."""
    cats = [
        Category(id=i + 1, name=n, supercategory=split_name(n)[1], isthing=True, synonyms=synonyms_of(n))
        for i, n in enumerate(class_names())
    ]
    cats += [
        Category(id=stuff_id_of(s), name=s, supercategory="stuff", isthing=False, synonyms=synonyms_of(s))
        for s in STUFF_NAMES
    ]
    return cats


def color_rgb(color: str) -> tuple[int, int, int]:
    """Nominal RGB of an evaluation or pretraining color."""
    return COLORS[color] if color in COLORS else PRETRAINING_COLORS[color]


@functools.cache
def pretraining_pairs() -> tuple[tuple[str, str], ...]:
    """``(shape, color)`` classes of the pretraining world, shape-major; class id = index + 1.

    Every pair of the extended shape and color lists except the evaluation world's 80 (so evaluation
    shapes appear only in pretraining colors and evaluation colors only on pretraining shapes).
    """
    evaluation = {(s, c) for s in SHAPES for c in COLORS}
    return tuple((s, c) for s in (*SHAPES, *PRETRAINING_SHAPES) for c in (*COLORS, *PRETRAINING_COLORS)
                 if (s, c) not in evaluation)


def pretraining_categories() -> list[Category]:
    """The pretraining world's things (ids 1..N, ``"<color> <shape>"``) then its stuff (ids N+1..)."""
    cats = [Category(id=i + 1, name=f"{c} {s}", supercategory=s, isthing=True)
            for i, (s, c) in enumerate(pretraining_pairs())]
    return cats + [Category(id=stuff_id_of(s, "pretraining"), name=s, supercategory="stuff", isthing=False)
                   for s in STUFF_NAMES]
