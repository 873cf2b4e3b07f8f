"""The synthetic world: the embedded default dataset (see :mod:`.world` and :mod:`.generate`).

Deterministic by seed, generated on the fly, emitted in the real formats (COCO instances,
COCO captions, Localized Narratives, COCO panoptic). Vocabulary in :mod:`.lexicon`.
"""

from omniseg.data.synth.generate import generate_dataset, generate_records, synth_recordset
from omniseg.data.synth.lexicon import STUFF_NAMES, categories, class_names, synonyms_of
from omniseg.data.synth.world import Scene, SynthConfig, generate_image, generate_scene

__all__ = [
    "STUFF_NAMES",
    "Scene",
    "SynthConfig",
    "categories",
    "class_names",
    "generate_dataset",
    "generate_image",
    "generate_records",
    "generate_scene",
    "synonyms_of",
    "synth_recordset",
]
