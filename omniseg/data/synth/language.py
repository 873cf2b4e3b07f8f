"""Captions and spoken-style narrative scripts for a synthetic scene.

Wording varies on purpose: objects are named by the class name, by synonyms ("crimson
disk" for "red circle") or by hypernyms ("a red shape"), so open-vocabulary matching is
needed to tie text to classes. Relations ("left of", "above") and counts are computed from
the scene, so captions are true statements about the image.

A narrative *script* is a list of :class:`Word` s; each word may point at its target (a
thing instance or a stuff region). The trace synthesizer (:mod:`.narrative`) gives each
word a time and moves the mouse over the target while its words are spoken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniseg.data.synth import lexicon

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass
class ObjectDesc:
    """What the language needs to know about one visible instance.

    Attributes:
        index: position of the instance in ``ImageRecord.instances``.
        shape, color: lexicon shape and color.
        scale: drawn size in pixels (frame diameter).
        center: (x, y) center of the visible box in pixels.
        stuff: name of the stuff class under the object's center (for "on the grass").
    """

    index: int
    shape: str
    color: str
    scale: float
    center: tuple[float, float]
    stuff: str


@dataclass
class Word:
    """One word of a narrative script. ``target`` is ("thing", instance index), ("stuff", name) or None."""

    text: str
    target: tuple[str, int | str] | None = None
    sentence_end: bool = False


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def article(phrase: str) -> str:
    """``"an amber ring"`` / ``"a red ring"``."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def size_word(scale: float, image_size: int) -> str:
    """Size adjective from the drawn size relative to the image ("" for medium)."""
    rel = scale / image_size
    if rel >= 0.27:
        return "large"
    if rel <= 0.07:
        return "tiny"
    if rel <= 0.11:
        return "small"
    return ""


def object_words(rng: np.random.Generator, obj: ObjectDesc, image_size: int, p_hypernym: float = 0.15) -> list[str]:
    """Words naming an object, e.g. ``["large", "crimson", "disk"]`` (no article).

    The color word is the color name half of the time, else a synonym; likewise the shape
    word; with probability ``p_hypernym`` the shape is replaced by a hypernym ("shape").
    """
    color = obj.color if rng.random() < 0.5 else _pick(rng, lexicon.COLOR_SYNONYMS[obj.color])
    if rng.random() < p_hypernym:
        noun = _pick(rng, lexicon.HYPERNYMS)
    else:
        noun = obj.shape if rng.random() < 0.5 else _pick(rng, lexicon.SHAPE_SYNONYMS[obj.shape])
    size = size_word(obj.scale, image_size) if rng.random() < 0.7 else ""
    return [w for w in (size, color, *noun.split()) if w]


def stuff_word(rng: np.random.Generator, stuff: str) -> str:
    return stuff if rng.random() < 0.6 else _pick(rng, lexicon.STUFF_SYNONYMS[stuff])


def relation(a: ObjectDesc, b: ObjectDesc, rng: np.random.Generator) -> str:
    """A true spatial relation of ``a`` relative to ``b`` (image y grows downwards)."""
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    if rng.random() < 0.3:
        return _pick(rng, ("beside", "next to", "near"))
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _np(rng: np.random.Generator, obj: ObjectDesc, image_size: int) -> str:
    return article(" ".join(object_words(rng, obj, image_size)))


def make_captions(
    rng: np.random.Generator, objects: list[ObjectDesc], stuff: list[str], image_size: int, count: int
) -> list[str]:
    """``count`` captions of the scene, each from a different template while templates last.

    Args:
        objects: visible instances (at least one).
        stuff: stuff classes present, largest first (may be empty when things cover the image;
            then no caption mentions stuff).
        count: number of captions (templates are reused if count exceeds them).
    """
    if not objects:
        raise ValueError("make_captions needs at least one object")
    order = [objects[int(i)] for i in rng.permutation(len(objects))]
    a = order[0]
    b = order[1] if len(order) > 1 else None
    n = len(objects)
    hyper = _pick(rng, lexicon.HYPERNYMS)

    def on(where: str, prefix: str = "on") -> str:
        return f" {prefix} {stuff_word(rng, where)}" if stuff else ""

    def obj(o: ObjectDesc) -> str:
        return _np(rng, o, image_size)

    templates = []
    if b is not None:
        templates.append(lambda: f"{obj(a)} {relation(a, b, rng)} {obj(b)}{on(a.stuff)}")
        listed = order[:3]
        templates.append(lambda: ", ".join(obj(o) for o in listed[:-1]) + f" and {obj(listed[-1])}"
                         + (on(stuff[0]) if stuff else ""))
    if stuff:
        templates.append(lambda: f"there is {obj(a)}{on(a.stuff, 'in front of the')}")
        templates.append(lambda: f"a picture of {obj(a)} with {stuff_word(rng, stuff[0])} in the background")
    count_word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    plural = hyper + ("s" if n != 1 else "")
    templates.append(lambda: f"{count_word} {plural} lying on " + " and ".join(stuff_word(rng, s) for s in stuff[:2])
                     if stuff else f"{count_word} {plural} filling the picture")
    if n == 1 or not stuff:
        templates.append(lambda: f"close-up of {obj(a)}{on(a.stuff)}")
    pick = [int(i) for i in rng.permutation(len(templates))]
    pick = (pick * (count // len(pick) + 1))[:count]
    return [templates[i]() for i in pick]


def _words(text: str, target: tuple[str, int | str] | None = None) -> list[Word]:
    return [Word(w, target) for w in text.split()]


def narrative_script(
    rng: np.random.Generator, objects: list[ObjectDesc], stuff: list[str], image_size: int
) -> list[Word]:
    """Spoken-style description mentioning every object in ``objects`` and the stuff.

    Example: "In this image we can see a large crimson disk. To the left of it there is a
    small blue star. In the background we can see the grass and water."
    """
    script: list[Word] = []
    openers = ("In this image we can see", "This picture shows", "Here we can see", "In this picture I can see")
    order = [objects[int(i)] for i in rng.permutation(len(objects))]
    for k, obj in enumerate(order):
        if k == 0:
            script += _words(_pick(rng, openers))
        elif rng.random() < 0.5 and k >= 1:
            rel = relation(obj, order[k - 1], rng)
            script += _words(rel[:1].upper() + rel[1:] + " it there is")
        else:
            script += _words(_pick(rng, ("There is also", "I can also see", "And there is")))
        words = object_words(rng, obj, image_size, p_hypernym=0.1)
        script += _words(article(words[0]).split()[0])
        script += [Word(w, ("thing", obj.index)) for w in words]
        if stuff and rng.random() < 0.4:
            script += _words("on the") + [Word(stuff_word(rng, obj.stuff), ("stuff", obj.stuff))]
        script[-1].sentence_end = True
    if stuff:
        script += _words(_pick(rng, ("In the background we can see", "Behind them there is",
                                     "In the background there is")))
    for j, s in enumerate(stuff):
        if j:
            script += _words("and")
        script.append(Word(stuff_word(rng, s), ("stuff", s)))
    script[-1].sentence_end = True
    return script


def script_caption(script: list[Word]) -> str:
    """Caption text of a script: words joined, sentences capitalized and ended with '.'."""
    parts = []
    for w in script:
        parts.append(w.text + ("." if w.sentence_end else ""))
    return " ".join(parts)
