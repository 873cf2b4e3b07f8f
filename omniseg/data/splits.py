"""Named base / novel splits and the training view they induce.

A :class:`Split` partitions the *thing* categories into base, novel and ignored, and says
which supervision each category gets in training (one of
:data:`omniseg.data.records.SUPERVISION_KINDS`). Evaluation groups classes with
:meth:`Split.group_of` (AP base / AP novel). Stuff categories are outside any split.

Protocols mirrored from the papers:
    * ``voc_like``: 20 base / 60 novel (Mask^X R-CNN, section 4 "voc / non-voc"; ALP paper,
      section 5 "COCO VOC-masks"). On COCO the 20 PASCAL VOC classes are base. Mask^X R-CNN
      section 4 also uses random splits of other sizes: :func:`random_split`.
    * ``zsd_like``: 48 base / 17 novel / 15 ignored (ALP paper, section 5 "COCO ZSD"; the COCO
      zero-shot detection split of Bansal et al. 2018). On COCO the published class lists are used.
    * ``compositional``: novel = unseen combinations of seen attributes, for categories named
      ``"<attribute> <object>"`` (synthetic world: held-out color-shape pairs; every shape and
      every color still appears in base). The vocabularies are read off the category names.

:func:`apply_split` builds the TRAINING view of a RecordSet: base instances are untouched;
a novel instance keeps only what its kind allows ("box": box without mask; "alp", "caption",
"none": the instance is dropped, captions / narratives stay, so ALPs and words can still be
curated from them); ignored instances are removed. No label is ever made stronger.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omniseg.data.errors import BadRecordError
from omniseg.data.records import SUPERVISION_KINDS, Category, RecordSet
from omniseg.errors import UserError
from omniseg.ops.rle import rle_to_box

Group = str  # "base" | "novel" | "ignored"


class UnknownSplitError(UserError, ValueError):
    """A named split is not defined for the dataset's class names; the message names the choices."""


#: the 20 PASCAL VOC classes under their COCO names
COCO_VOC_NAMES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch", "train", "tv",
)  # fmt: skip

#: COCO zero-shot split (Bansal et al. 2018, as used by OVR-CNN): 48 seen classes
COCO_ZSD_BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep",
    "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard",
    "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza",
    "donut", "chair", "bed", "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster",
    "refrigerator", "book", "clock", "vase", "toothbrush",
)  # fmt: skip
#: ... and 17 unseen classes
COCO_ZSD_NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard", "cup",
    "knife", "cake", "couch", "keyboard", "sink", "scissors",
)  # fmt: skip


@dataclass
class Split:
    """A base / novel / ignored partition of thing categories with per-class training supervision.

    Attributes:
        name: split name ("voc-like", ...).
        base_ids, novel_ids, ignored_ids: disjoint sorted category ids.
        train_supervision: kind per base and novel id ("mask", "box", "alp", "caption", "none").
    """

    name: str
    base_ids: tuple[int, ...]
    novel_ids: tuple[int, ...]
    ignored_ids: tuple[int, ...] = ()
    train_supervision: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_ids = tuple(sorted(int(i) for i in self.base_ids))
        self.novel_ids = tuple(sorted(int(i) for i in self.novel_ids))
        self.ignored_ids = tuple(sorted(int(i) for i in self.ignored_ids))
        groups = (set(self.base_ids), set(self.novel_ids), set(self.ignored_ids))
        total = sum(len(g) for g in groups)
        if len(set().union(*groups)) != total or total != len(self.base_ids) + len(self.novel_ids) + len(self.ignored_ids):
            raise ValueError(f"split {self.name!r}: base / novel / ignored ids must be disjoint and unique")
        for cid in self.base_ids + self.novel_ids:
            kind = self.train_supervision.get(cid)
            if kind not in SUPERVISION_KINDS:
                raise ValueError(f"split {self.name!r}: category {cid} has supervision {kind!r}, "
                                 f"expected one of {SUPERVISION_KINDS}")
        extra = set(self.train_supervision) - set(self.base_ids) - set(self.novel_ids)
        if extra:
            raise ValueError(f"split {self.name!r}: supervision given for ids outside base/novel: {sorted(extra)}")

    def group_of(self, category_id: int) -> Group:
        """``"base"``, ``"novel"`` or ``"ignored"``; ValueError for an id outside the split."""
        if category_id in self.groups:
            return self.groups[category_id]
        raise ValueError(f"split {self.name!r}: category id {category_id} is not in the split")

    @property
    def groups(self) -> dict[int, Group]:
        """Category id -> group, for every id in the split."""
        out = {i: "ignored" for i in self.ignored_ids}
        out.update({i: "novel" for i in self.novel_ids})
        out.update({i: "base" for i in self.base_ids})
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "base_ids": list(self.base_ids),
            "novel_ids": list(self.novel_ids),
            "ignored_ids": list(self.ignored_ids),
            "train_supervision": {str(k): v for k, v in sorted(self.train_supervision.items())},
        }


def _things(categories: list[Category]) -> list[Category]:
    things = [c for c in categories if c.isthing]
    if not things:
        raise ValueError("no thing categories to split")
    return sorted(things, key=lambda c: c.id)


def _check_kind(novel_supervision: str) -> None:
    if novel_supervision not in SUPERVISION_KINDS or novel_supervision == "mask":
        raise ValueError(f"novel_supervision must be one of {[k for k in SUPERVISION_KINDS if k != 'mask']}, "
                         f"got {novel_supervision!r}")


def _make(name: str, base: list[int], novel: list[int], ignored: list[int], novel_supervision: str) -> Split:
    _check_kind(novel_supervision)
    sup = {i: "mask" for i in base}
    sup.update({i: novel_supervision for i in novel})
    return Split(name, tuple(base), tuple(novel), tuple(ignored), sup)


def _by_names(things: list[Category], names: tuple[str, ...]) -> list[int] | None:
    by_name = {c.name: c.id for c in things}
    if all(n in by_name for n in names):
        return [by_name[n] for n in names]
    return None


def random_split(
    categories: list[Category], num_base: int, seed: int = 0, novel_supervision: str = "box",
    num_novel: int | None = None, name: str = "random",
) -> Split:
    """Random base / novel (/ ignored) split of the thing categories, deterministic by ``seed``.

    Args:
        num_base: base classes (get masks).
        num_novel: novel classes (default: all the rest); the remainder is ignored.
    """
    ids = [c.id for c in _things(categories)]
    num_novel = len(ids) - num_base if num_novel is None else num_novel
    if num_base < 0 or num_novel < 0 or num_base + num_novel > len(ids):
        raise ValueError(f"cannot take {num_base} base + {num_novel} novel of {len(ids)} thing classes")
    perm = [ids[int(i)] for i in np.random.default_rng(seed).permutation(len(ids))]
    return _make(name, perm[:num_base], perm[num_base:num_base + num_novel], perm[num_base + num_novel:],
                 novel_supervision)


def _synthetic(things: list[Category]) -> bool:
    """True when every thing class is one of the synthetic worlds' ``"<color> <shape>"`` classes."""
    from omniseg.data.synth import lexicon

    names = set(lexicon.class_names()) | {f"{c} {s}" for s, c in lexicon.pretraining_pairs()}
    return all(c.name in names for c in things)


def _not_defined(name: str, things: list[Category]) -> UnknownSplitError:
    examples = ", ".join(repr(c.name) for c in things[:3])
    return UnknownSplitError(
        f"split {name!r} is defined for the COCO class names and the synthetic world, not for these "
        f"{len(things)} classes ({examples}, ...); choose: a split file with your base / novel classes "
        '(data.split_file=FILE.json holding {"base": [names or ids], "novel": [...]}), '
        "'compositional' (names '<attribute> <object>') or no split (data.split='')")


def voc_like(categories: list[Category], seed: int = 0, novel_supervision: str = "box") -> Split:
    """20 base (masks) / 60 novel. COCO categories: the 20 VOC classes are base.

    The synthetic world: 20 random base classes (by ``seed``; a quarter of the things for
    other numbers of synthetic classes).

    Raises:
        UnknownSplitError: the classes are neither COCO's (all 20 VOC names) nor synthetic.
    """
    things = _things(categories)
    voc = _by_names(things, COCO_VOC_NAMES)
    if voc is not None:
        return _make("voc-like", voc, [c.id for c in things if c.id not in voc], [], novel_supervision)
    if not _synthetic(things):
        raise _not_defined("voc-like", things)
    return random_split(categories, max(1, round(len(things) / 4)), seed, novel_supervision, name="voc-like")


def zsd_like(categories: list[Category], seed: int = 0, novel_supervision: str = "box") -> Split:
    """48 base / 17 novel / rest ignored. COCO categories: the published zero-shot class lists; the
    synthetic world: a random 48 / 17 by ``seed``.

    Raises:
        UnknownSplitError: the classes are neither COCO's nor synthetic.
    """
    things = _things(categories)
    base, novel = _by_names(things, COCO_ZSD_BASE), _by_names(things, COCO_ZSD_NOVEL)
    if base is not None and novel is not None:
        ignored = [c.id for c in things if c.id not in base and c.id not in novel]
        return _make("zsd-like", base, novel, ignored, novel_supervision)
    if not _synthetic(things):
        raise _not_defined("zsd-like", things)
    if len(things) < 65:
        raise ValueError(f"zsd_like needs at least 65 thing classes, got {len(things)}")
    return random_split(categories, 48, seed, novel_supervision, num_novel=17, name="zsd-like")


def attribute_object(name: str) -> tuple[str, str]:
    """``"red ring"`` -> ``("red", "ring")``: a compositional category name's two words.

    Raises:
        ValueError: ``name`` is not exactly two space-separated words.
    """
    words = name.split(" ")
    if len(words) != 2 or not all(words):
        raise ValueError(f"{name!r} is not a compositional class name '<attribute> <object>' "
                         "(e.g. '<color> <shape>' in the synthetic world)")
    return words[0], words[1]


def compositional(
    categories: list[Category], seed: int = 0, novel_supervision: str = "box", num_novel: int = 20,
    min_base_per_attribute: int = 2,
) -> Split:
    """Novel = held-out attribute-object combinations; every attribute and object stays in base.

    Category names must be ``"<attribute> <object>"`` (:func:`attribute_object`; the synthetic
    world's ``"<color> <shape>"``); the attribute and object vocabularies are the words that
    occur. Combinations are drawn in a seeded random order and held out while each object keeps
    at least ``min_base_per_attribute`` base attributes and each attribute at least that many
    base objects.

    Raises:
        ValueError: a name is not ``"<attribute> <object>"``, or ``num_novel`` cannot be held out.
    """
    things = _things(categories)
    attrs = {c.id: attribute_object(c.name) for c in things}  # id -> (attribute, object)
    base_objects: dict[str, int] = {}
    base_attributes: dict[str, int] = {}
    for attribute, obj in attrs.values():
        base_objects[obj] = base_objects.get(obj, 0) + 1
        base_attributes[attribute] = base_attributes.get(attribute, 0) + 1
    order = [things[int(i)].id for i in np.random.default_rng(seed).permutation(len(things))]
    novel: list[int] = []
    for cid in order:
        if len(novel) == num_novel:
            break
        attribute, obj = attrs[cid]
        if base_objects[obj] > min_base_per_attribute and base_attributes[attribute] > min_base_per_attribute:
            novel.append(cid)
            base_objects[obj] -= 1
            base_attributes[attribute] -= 1
    if len(novel) < num_novel:
        raise ValueError(f"compositional: could hold out only {len(novel)} of {num_novel} combinations "
                         f"keeping {min_base_per_attribute} base classes per object and attribute")
    base = [c.id for c in things if c.id not in set(novel)]
    return _make("compositional", base, novel, [], novel_supervision)


#: named split builders (all take ``(categories, seed=0, novel_supervision="box")``)
SPLITS: dict[str, Callable[..., Split]] = {
    "voc-like": voc_like,
    "zsd-like": zsd_like,
    "compositional": compositional,
}


def _entry_id(entry: Any, things: list[Category], categories: list[Category]) -> tuple[int | None, str]:
    """``(id, "")`` of a split-file entry (a thing category name or integer id), else ``(None, why)``."""
    if isinstance(entry, bool) or not isinstance(entry, (int, str)):
        return None, f"{entry!r} is not a category name or integer id"
    for c in things:
        if entry == (c.name if isinstance(entry, str) else c.id):
            return c.id, ""
    if any(entry == (c.name if isinstance(entry, str) else c.id) for c in categories):
        return None, f"{entry!r} is a stuff category; a split holds thing classes"
    if isinstance(entry, int):
        return None, f"{entry} is not a category id of the dataset (thing ids {things[0].id}..{things[-1].id})"
    close = difflib.get_close_matches(entry, [c.name for c in things], n=1)
    hint = f"did you mean {close[0]!r}?" if close else "e.g. " + ", ".join(repr(c.name) for c in things[:3])
    return None, f"{entry!r} is not a category name of the dataset ({hint})"


def split_from_file(
    path: str | os.PathLike, categories: list[Category], novel_supervision: str = "box"
) -> Split:
    """The split a JSON file names: ``{"base": [...], "novel": [...]}`` of thing category names or ids.

    Base classes keep their masks; novel classes get ``novel_supervision``. Without ``"novel"``
    every other thing class is novel; with it, thing classes in neither list are ignored (dropped
    from training, outside the base / novel groups of the evaluation). The split's name is the
    file's name.

    Raises:
        BadRecordError: naming the file and the entry: not a JSON object, an unknown key, no
            ``"base"``, a list that is not a list, an unknown name or id, a stuff class or a class
            listed twice. FileNotFoundError for a missing file.
    """
    from omniseg.data.formats.validation import load_json_file

    _check_kind(novel_supervision)
    file = os.fspath(path)
    data = load_json_file(file)
    shape = '{"base": [names or ids], "novel": [names or ids]}'
    if not isinstance(data, dict):
        raise BadRecordError(file, "file", f"a split file is a JSON object {shape}")
    for key in data:
        if key not in ("base", "novel"):
            raise BadRecordError(file, f"key {key!r}", f"unknown key; a split file is {shape}")
    if "base" not in data:
        raise BadRecordError(file, "file", f"no \"base\" list (the classes that keep their masks); expected {shape}")
    things, seen = _things(categories), {}
    for key in ("base", "novel"):
        if not isinstance(data.get(key, []), list):
            raise BadRecordError(file, key, f"must be a list of category names or ids, got {type(data[key]).__name__}")
        for k, entry in enumerate(data.get(key, [])):
            cid, why = _entry_id(entry, things, categories)
            if cid is None:
                raise BadRecordError(file, f"{key}[{k}]", why)
            if cid in seen:
                raise BadRecordError(file, f"{key}[{k}]", f"{entry!r} is listed twice (already in {seen[cid]})")
            seen[cid] = key
    base = [i for i, g in seen.items() if g == "base"]
    rest = [c.id for c in things if c.id not in seen]
    novel = [i for i, g in seen.items() if g == "novel"] if "novel" in data else rest
    ignored = rest if "novel" in data else []
    return _make(Path(file).name, base, novel, ignored, novel_supervision)


def apply_split(rs: RecordSet, split: Split) -> RecordSet:
    """The TRAINING view of ``rs`` under ``split`` (a new RecordSet; ``rs`` is not modified).

    Each instance keeps what its class's kind allows: "mask": untouched (base classes);
    "box": mask dropped (box kept, quality unchanged; taken from the mask if the instance had
    no box); "alp" / "caption" / "none": instance dropped. Ignored: dropped. Thing segments
    (panoptic) survive only for "mask" classes (a segment is a mask). Instances without a category id
    (free phrases, ALPs) and stuff segments are kept. Captions and narratives are kept.

    Raises:
        ValueError: an instance's category id is neither in the split nor a stuff category,
            naming the image and the instance.
    """
    stuff_ids = {c.id for c in rs.categories if not c.isthing}
    groups = split.groups
    records = []
    for rec in rs.records:
        instances = []
        for k, inst in enumerate(rec.instances):
            cid = inst.category_id
            if cid is None:
                instances.append(dataclasses.replace(inst))
                continue
            if cid not in groups:
                if cid in stuff_ids:
                    instances.append(dataclasses.replace(inst))
                    continue
                raise ValueError(f"image {rec.image_id}: instance #{k} (id={inst.id}): category {cid} "
                                 f"is not in split {split.name!r}")
            if groups[cid] == "ignored":
                continue
            kind = split.train_supervision[cid]
            if kind == "mask":
                instances.append(dataclasses.replace(inst))
            elif kind == "box" and (inst.box is not None or inst.mask is not None):
                # a box derived from an exact mask is weaker than the mask, never stronger
                box = inst.box if inst.box is not None else rle_to_box(inst.mask)
                instances.append(dataclasses.replace(inst, box=box, mask=None))
        segments = [
            dataclasses.replace(s) for s in rec.segments
            if not s.is_thing or s.category_id is None
            or split.train_supervision.get(s.category_id) == "mask"
        ]
        records.append(dataclasses.replace(
            rec, instances=instances, segments=segments, captions=list(rec.captions),
            narratives=list(rec.narratives), labels=list(rec.labels),
        ))
    return RecordSet(records=records, categories=list(rs.categories), image_root=rs.image_root,
                     name=f"{rs.name}[{split.name}]" if rs.name else split.name)
