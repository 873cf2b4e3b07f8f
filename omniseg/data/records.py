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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

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
