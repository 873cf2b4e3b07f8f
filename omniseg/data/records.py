"""The one data model every reader produces and every method consumes.

An :class:`ImageRecord` holds everything known about one image: its instances (each with
explicit, per-instance supervision), captions, Localized-Narratives-style narratives and
stuff segments. Nothing here fabricates a stronger label than a file holds: a box-only
instance has ``mask=None``; an approximately localized phrase (ALP) has a free-form
``text``, ``box_quality="approximate"`` and no category id.

Conventions:
    * boxes are ``(x0, y0, x1, y1)`` in absolute pixels of the stored image (XYXY, float);
      the COCO readers/writers convert from/to XYWH.
    * masks are COCO compressed RLE dicts ``{"size": [h, w], "counts": str}`` (see
      :mod:`omniseg.ops.rle`).
    * trace points in narratives keep the public Localized Narratives convention:
      ``x, y`` normalized by image width/height (may fall slightly outside [0, 1]),
      ``t`` in seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

BoxQuality = Literal["exact", "approximate"]
Box = tuple[float, float, float, float]
RLE = dict[str, Any]

#: supervision kinds a split can give a category in training (see data/splits.py)
SUPERVISION_KINDS = ("mask", "box", "alp", "caption", "none")


@dataclass(slots=True)
class Instance:
    """One object annotation (or prediction / pseudo label) in an image.

    (``slots``: no per-object ``__dict__``, ~18% less memory; a 15M-box dataset holds 15M of these.)

    Attributes:
        text: class name or free-form phrase naming the object.
        category_id: dataset category id when the text is a known class, else None.
        box: XYXY box in pixels, or None (e.g. mask-only or phrase-only supervision).
        box_quality: "exact" for annotated boxes, "approximate" for boxes derived from
            mouse traces (ALPs) -- models must not regress onto approximate boxes.
        mask: COCO compressed RLE of the visible object, or None.
        source: where the label came from ("coco", "lvis", "synth", "narrative", "pseudo", ...).
        is_crowd: COCO crowd flag (region of many objects; ignored by AP matching).
        score: confidence for predictions / pseudo labels; None for ground truth.
        id: annotation id from the file (kept for round trips), or None.
        area: the file's annotation area (COCO's polygon area, used for S/M/L AP), or None
            to use the mask's pixel count.
    """

    text: str
    category_id: int | None = None
    box: Box | None = None
    box_quality: BoxQuality = "exact"
    mask: RLE | None = None
    source: str = ""
    is_crowd: bool = False
    score: float | None = None
    id: int | None = None
    area: float | None = None

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    @property
    def has_exact_box(self) -> bool:
        return self.box is not None and self.box_quality == "exact"


@dataclass
class Utterance:
    """One timed piece of a narrative's caption (Localized Narratives ``timed_caption``)."""

    utterance: str
    start_time: float
    end_time: float


@dataclass
class TracePoint:
    """A mouse-trace sample: normalized image coordinates and time in seconds."""

    x: float
    y: float
    t: float


@dataclass
class Narrative:
    """A Localized Narrative: spoken caption, word timings and mouse trace segments."""

    caption: str
    timed_caption: list[Utterance] = field(default_factory=list)
    traces: list[list[TracePoint]] = field(default_factory=list)
    annotator_id: int | str | None = None
    dataset_id: str = ""
    voice_recording: str = ""


@dataclass
class Segment:
    """A panoptic / semantic segment (things or stuff). ``mask`` is a compressed RLE."""

    text: str
    category_id: int | None
    mask: RLE
    is_thing: bool = False
    id: int | None = None
    is_crowd: bool = False


@dataclass
class ImageRecord:
    """Everything known about one image.

    Attributes:
        image_id: id from the annotation file (int for COCO, str for Open Images / LN).
        file_name: image path (relative to the dataset's ``image_root`` or absolute).
        width, height: size of the stored image in pixels (after EXIF orientation).
        instances: object annotations with per-instance supervision.
        captions: free-form captions of the whole image.
        narratives: Localized-Narratives-style records.
        segments: panoptic segments (stuff and, for panoptic files, things).
        labels: image-level class names known to be present (Open Images style).
        neg_category_ids: LVIS: categories verified absent from the image.
        not_exhaustive_category_ids: LVIS: categories whose instances are not all annotated.

    The list fields are read through properties: a reader may leave them unmade
    (:func:`lean_record`) or keep ``instances`` in a column store until first read
    (:func:`defer_instances`); either way a read gives a plain list, made once and kept.
    """

    image_id: int | str
    file_name: str
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    narratives: list[Narrative] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    neg_category_ids: list[int] = field(default_factory=list)
    not_exhaustive_category_ids: list[int] = field(default_factory=list)


class InstanceStore(Protocol):
    """Where deferred instances live (e.g. the COCO reader's box columns): ``key`` names a record."""

    def make(self, key: int) -> list[Instance]: ...

    def count(self, key: int) -> int: ...


_MAKING = threading.Lock()


class DeferredInstances:
    """A record's instances kept in a shared :class:`InstanceStore` until first asked for.

    Why: a 15M-box file as :class:`Instance` objects takes ~350 bytes a box (object, box tuple,
    floats, id, area); as columns ~55. Reading :attr:`ImageRecord.instances` makes this record's objects
    once and keeps them, so they behave exactly as a list given up front (changes stick, ``==`` /
    ``repr`` / ``copy`` / ``pickle`` see the same values). Copies of a record made before that share
    this object and so get the same list, as they would share a list. The store is dropped by each
    record once made, and freed when the last one is.
    """

    __slots__ = ("store", "key", "made")

    def __init__(self, store: InstanceStore | None, key: int, made: list[Instance] | None = None) -> None:
        self.store, self.key, self.made = store, key, made

    def get(self) -> list[Instance]:
        """The instances, made on the first call (thread-safe: loader threads share records)."""
        if self.made is None:
            with _MAKING:
                if self.made is None:
                    self.made = self.store.make(self.key)  # type: ignore[union-attr]
                    self.store = None
        return self.made

    def __len__(self) -> int:
        return len(self.made) if self.made is not None else self.store.count(self.key)  # type: ignore[union-attr]

    def __reduce__(self) -> tuple:
        # pickle / deepcopy keep it deferred (the store goes once per pickle, by memo) or keep the made list
        return (DeferredInstances, (self.store, self.key, self.made))


class _Unset:
    """A list field not made yet (see :func:`lean_record`); one object, kept by pickle and copy."""

    def __repr__(self) -> str:
        return "<unset>"

    def __reduce__(self) -> str:
        return "_UNSET"


_UNSET = _Unset()
#: list fields a lean record makes on first read (``instances`` may also be deferred to a store)
_LAZY_LISTS = ("instances", "captions", "narratives", "segments", "labels", "neg_category_ids",
               "not_exhaustive_category_ids")
_SLOTS = tuple("_" + n for n in _LAZY_LISTS)


def _lazy_list(name: str) -> property:
    """The field ``name`` stored as ``_name``: an unmade list is made on the first read and kept."""
    slot = "_" + name

    def get(self: ImageRecord) -> list:
        v = getattr(self, slot)
        if v is _UNSET:
            with _MAKING:  # two threads reading it first get the same list
                v = getattr(self, slot)
                if v is _UNSET:
                    v = []
                    setattr(self, slot, v)
        elif type(v) is DeferredInstances:
            v = v.get()
            setattr(self, slot, v)
        return v

    def set(self: ImageRecord, value: list) -> None:
        setattr(self, slot, value)

    return property(get, set, doc=f"see the class docstring ({name})")


def _copy_record(self: ImageRecord) -> ImageRecord:
    """``copy.copy``: copies share every list, as plain lists are shared (unmade ones are made first;
    deferred instances are shared through their :class:`DeferredInstances`)."""
    for slot in _SLOTS:
        if getattr(self, slot) is _UNSET:
            setattr(self, slot, [])
    new = object.__new__(type(self))
    new.__dict__.update(self.__dict__)
    return new


# The list fields stay dataclass fields (constructor, ==, repr, fields(), replace()); reading one goes
# through a property so a reader can defer it (:func:`defer_instances`, :func:`lean_record`).
for _name in _LAZY_LISTS:
    setattr(ImageRecord, _name, _lazy_list(_name))
ImageRecord.__copy__ = _copy_record  # type: ignore[attr-defined]


def lean_record(image_id: int | str, file_name: str, width: int, height: int) -> ImageRecord:
    """``ImageRecord(image_id, file_name, width, height)`` whose empty lists are made on first read
    (~430 bytes less a record: 650 MB for the 1.5M images of an Open Images scale file)."""
    r = object.__new__(ImageRecord)
    r.image_id, r.file_name, r.width, r.height = image_id, file_name, width, height
    for slot in _SLOTS:
        setattr(r, slot, _UNSET)
    return r


def defer_instances(record: ImageRecord, store: InstanceStore, key: int) -> None:
    """Make ``record.instances`` come from ``store.make(key)`` when first read (replacing what it holds)."""
    record._instances = DeferredInstances(store, key)  # type: ignore[attr-defined]


def instance_count(record: ImageRecord) -> int:
    """``len(record.instances)`` without making deferred instances."""
    v = record._instances  # type: ignore[attr-defined]
    return 0 if v is _UNSET else len(v)


@dataclass
class Category:
    """A named class. ``synonyms`` are alternative names (LVIS synonyms, lexicon words);
    ``frequency`` is LVIS's "r" / "c" / "f" (rare / common / frequent) or "" when unknown."""

    id: int
    name: str
    supercategory: str = ""
    isthing: bool = True
    synonyms: list[str] = field(default_factory=list)
    frequency: str = ""


@dataclass
class RecordSet:
    """A dataset: categories plus image records, and where its images live.

    ``image_root`` is joined with a record's relative ``file_name`` to find the file.
    """

    records: list[ImageRecord] = field(default_factory=list)
    categories: list[Category] = field(default_factory=list)
    image_root: str = ""
    name: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def category_by_id(self) -> dict[int, Category]:
        return {c.id: c for c in self.categories}

    def category_by_name(self) -> dict[str, Category]:
        return {c.name: c for c in self.categories}

    def image_path(self, record: ImageRecord) -> str:
        import os

        if os.path.isabs(record.file_name) or not self.image_root:
            return record.file_name
        return os.path.join(self.image_root, record.file_name)
