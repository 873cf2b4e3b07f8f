"""Caption words for OpenSeg's word-region grounding (openseg paper, Sec. 3.2 and 4.1).

A caption is broken into words "by extracting list of nouns and adjectives from the caption" (Sec. 3.2) with the
curation's spaCy tagger (:mod:`omniseg.curate.pos`); each word is then dropped at random in every training step,
kept with probability ``kp`` = 0.5 (Sec. 4.1 "Training Parameters"; Table 9). The word kinds are a switch for the
issue's ablation (paper Table 3 in the issue's numbering): ``"noun_adj"`` (the paper), ``"noun_adj_verb"``, and
``"all"`` (every token but punctuation, symbols and spaces).

Words are the lower-cased token texts, in caption order, repeats kept (Eq. 3 averages over the caption's words).
Tagging is cached per caption (a caption is tagged once per process); :meth:`CaptionWords.prefetch` tags many
captions in one ``nlp.pipe`` pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch

WordKinds = Literal["noun_adj", "noun_adj_verb", "all"]

#: universal POS tags kept per word kind (None: every tag except :data:`NOT_WORDS`)
KIND_POS: dict[str, frozenset[str] | None] = {
    "noun_adj": frozenset({"NOUN", "PROPN", "ADJ"}),
    "noun_adj_verb": frozenset({"NOUN", "PROPN", "ADJ", "VERB"}),
    "all": None,
}
#: tags that are never words
NOT_WORDS = frozenset({"PUNCT", "SYM", "SPACE", "X"})


class CaptionWords:
    """Caption -> its words of the configured kinds (module docstring), cached per caption.

    Args:
        kinds: "noun_adj" (paper), "noun_adj_verb" or "all".
        tagger: ``texts -> iterator of token lists`` whose tokens have ``text`` and ``pos`` (e.g.
            :meth:`omniseg.curate.pos.PosTagger.pipe`); None loads the curation's spaCy tagger on first use.
    """

    def __init__(self, kinds: WordKinds = "noun_adj", tagger: Callable[[Iterable[str]], Iterable[Sequence[Any]]] |
                 None = None):
        if kinds not in KIND_POS:
            raise ValueError(f"word kinds must be one of {sorted(KIND_POS)}, got {kinds!r}")
        self.kinds = kinds
        self._tagger = tagger
        self.cache: dict[str, tuple[str, ...]] = {}

    def _tag(self, texts: list[str]) -> Iterable[Sequence[Any]]:
        if self._tagger is None:
            from omniseg.curate.pos import PosTagger, load_tagger

            try:
                self._tagger = PosTagger(load_tagger()).pipe
            except RuntimeError as e:  # no spaCy model installed
                from omniseg.errors import UserError

                raise UserError(f"OpenSeg's caption words need a spaCy model: {e}") from None
        return self._tagger(texts)

    def _keep(self, pos: str) -> bool:
        allowed = KIND_POS[self.kinds]
        return pos not in NOT_WORDS if allowed is None else pos in allowed

    def prefetch(self, captions: Iterable[str]) -> None:
        """Tag every caption not yet cached, in one tagger pass."""
        todo = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if todo:
            for caption, tokens in zip(todo, self._tag(todo)):
                self.cache[caption] = tuple(t.text.lower() for t in tokens if self._keep(t.pos))

    def __call__(self, caption: str) -> list[str]:
        """The caption's words (lower-cased, caption order)."""
        if caption not in self.cache:
            self.prefetch([caption])
        return list(self.cache[caption])


def drop_words(words: Sequence[str], keep_prob: float, generator: torch.Generator | None = None) -> list[str]:
    """Keep each word independently with probability ``keep_prob`` (openseg Sec. 3.2: "randomly drop each word
    with the probability of 1 - kp"). Draws ``len(words)`` uniforms from ``generator`` (None: torch's global one)."""
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
    if not words:
        return []
    keep = torch.rand(len(words), generator=generator) < keep_prob
    return [w for w, k in zip(words, keep.tolist()) if k]
