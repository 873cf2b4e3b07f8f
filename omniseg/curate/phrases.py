"""Phrase extraction from POS-tagged captions: adjectives + consecutive nouns (ALP paper, section 3.1).

The paper "extract[s] adjectives and (consecutive) nouns as phrases" and "discard[s] phrases with
stuff classes like sky, water". We read that as: a phrase is a maximal run of adjacent words
``ADJ* (NOUN|PROPN)+`` ("large crimson disk", "water bottle"); adjectives without a following
noun ("the car is red") name no object and give no phrase. A phrase is dropped when its head (its
last noun) is a stuff word, so "blue sky" goes and "water bottle" stays.

Our addition, configurable like the stuff list: nouns that name parts of the picture or
directions rather than objects ("in this *image*", "to the *left*", "in the *background*") are
dropped the same way (:data:`DEFAULT_NON_OBJECT`); every Localized Narrative starts with one.

Hyphenated compounds the tokenizer splits ("five-pointed", "t-shirt") are treated as one word:
a noun when their last part is a noun, else an adjective (a compound modifier).

A phrase's time span comes from the ``timed_caption``: the union of the intervals of the
utterances its words were spoken in (paper section 3.1: "the union of utterance time-intervals
of its words"). :func:`phrase_intervals` does that for all phrases of a caption at once (word
alignment, then one phrases x words mask); :func:`align_utterances` / :func:`phrase_interval`
are the per-character, per-phrase form it is tested against.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from omniseg.curate.pos import TaggedToken, TokenRow
from omniseg.data.records import Utterance

NOUN_POS = frozenset({"NOUN", "PROPN"})
ADJ_POS = frozenset({"ADJ"})

#: stuff words (COCO-Stuff-like background regions, ALP paper section 3.1), compared with a
#: phrase head's text and lemma. A plain list: it covers the synthetic world's stuff names and
#: their synonyms (the first 18 words; tests/data/synth checks the synthetic lexicon against it),
#: but curation does not depend on the synthetic world. The order is kept stable: it is part of
#: the curation config recorded for resuming a run.
DEFAULT_STUFF: tuple[str, ...] = (
    "grass", "water", "sand", "sky", "wall", "wood", "lawn", "turf", "lake", "sea", "beach", "dune",
    "clouds", "air", "bricks", "plaster", "planks", "timber", "ground", "floor", "road", "street",
    "pavement", "sidewalk", "snow", "ocean", "river", "field", "dirt", "mud", "gravel", "soil", "ceiling",
    "fog", "cloud", "hill", "hills", "mountain", "mountains", "moss", "forest", "greenery", "darkness",
    "sunlight", "shadow", "land",
)  # fmt: skip

#: nouns naming parts of the picture / directions, not objects (dropped like stuff)
DEFAULT_NON_OBJECT: tuple[str, ...] = (
    "image", "picture", "photo", "photograph", "pic", "view", "scene", "background", "foreground",
    "left", "right", "front", "back", "top", "bottom", "side", "middle", "center", "centre", "corner",
    "edge", "part", "area", "place", "way", "lot",
)


@dataclass(frozen=True)
class Phrase:
    """A candidate phrase in a caption.

    Attributes:
        text: the caption's text of the phrase, lower-cased ("five-pointed star").
        start, end: character span in the caption.
        head: the last noun (lower-cased text), used for the stuff test.
        head_lemma: its lemma.
    """

    text: str
    start: int
    end: int
    head: str
    head_lemma: str


Token = TaggedToken | TokenRow


def _words(tokens: Sequence[Token]) -> list[tuple[list[Token], str]]:
    """Group hyphen-joined tokens ("five", "-", "pointed") into words with one POS."""
    groups: list[list[Token]] = []
    for tok in tokens:
        prev = groups[-1][-1] if groups else None
        if prev is not None and not prev.space_after and (tok.text == "-" or prev.text == "-") and tok.text != prev.text:
            groups[-1].append(tok)
        else:
            groups.append([tok])
    out = []
    for g in groups:
        if len(g) == 1:
            out.append((g, g[0].pos))
        elif g[-1].text == "-":  # dangling hyphen ("left- and right-handed"): not a word
            out.append((g, "PUNCT"))
        else:
            out.append((g, "NOUN" if g[-1].pos in NOUN_POS else "ADJ"))
    return out


def candidate_phrases(caption: str, tokens: Sequence[Token]) -> list[Phrase]:
    """All ``ADJ* NOUN+`` runs of ``tokens`` (a tagged ``caption``; :class:`TaggedToken` s or
    :class:`TokenRow` s), stuff not yet removed."""
    words = _words(tokens)
    out: list[Phrase] = []
    i = 0
    while i < len(words):
        j = i
        while j < len(words) and words[j][1] in ADJ_POS:
            j += 1
        k = j
        while k < len(words) and words[k][1] in NOUN_POS:
            k += 1
        if k > j:  # at least one noun
            first, last = words[i][0][0], words[k - 1][0][-1]
            end = last.start + len(last.text)
            head_tok = words[k - 1][0]
            head = caption[head_tok[0].start : end].lower()
            lemma = head if len(head_tok) > 1 else (head_tok[0].lemma or head)
            out.append(Phrase(caption[first.start : end].lower(), first.start, end, head, lemma))
            i = k
        else:
            i = max(j, i + 1)
    return out


def is_dropped(phrase: Phrase, words: Iterable[str] | frozenset[str]) -> bool:
    """Whether the phrase's head noun (text or lemma) is one of ``words``."""
    ws = words if isinstance(words, frozenset) else frozenset(words)
    return phrase.head in ws or phrase.head_lemma in ws


def extract_phrases(
    caption: str,
    tokens: Sequence[Token],
    stuff: Iterable[str] = DEFAULT_STUFF,
    non_object: Iterable[str] = DEFAULT_NON_OBJECT,
) -> tuple[list[Phrase], dict[str, int]]:
    """Object phrases of a tagged caption, with stuff and non-object phrases removed.

    Returns:
        the kept phrases in caption order, and counts of dropped ones {"stuff": n, "non_object": m}.
    """
    stuff_set = _lower_set(stuff)
    other_set = _lower_set(non_object)
    kept: list[Phrase] = []
    dropped = {"stuff": 0, "non_object": 0}
    for p in candidate_phrases(caption, tokens):
        if is_dropped(p, stuff_set):
            dropped["stuff"] += 1
        elif is_dropped(p, other_set):
            dropped["non_object"] += 1
        else:
            kept.append(p)
    return kept, dropped


def _lower_set(words: Iterable[str]) -> frozenset[str]:
    if isinstance(words, tuple):
        return _lower_set_cached(words)
    return frozenset(w.lower() for w in words)


_LOWER_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _lower_set_cached(words: tuple[str, ...]) -> frozenset[str]:
    out = _LOWER_SETS.get(words)
    if out is None:
        out = _LOWER_SETS[words] = frozenset(w.lower() for w in words)
    return out


_WORD = re.compile(r"[^\W_]+")


def _norm_words(text: str) -> list[tuple[str, int, int]]:
    """Lower-cased alphanumeric runs of ``text`` with their character spans (punctuation-blind)."""
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def align_utterances(caption: str, utterances: list[Utterance]) -> list[int]:
    """Index of the utterance each caption character was spoken in (-1: none).

    Utterances may hold several words ("In this") and punctuation; both texts are compared as
    sequences of lower-cased alphanumeric words, in order. When they differ (transcript edits),
    the longest common runs of words are matched (difflib) and the other words get -1.

    Returns:
        a list of ``len(caption)`` utterance indices.
    """
    cap = _norm_words(caption)
    utt_words, owner = [], []
    for k, u in enumerate(utterances):
        for w, _, _ in _norm_words(u.utterance):
            utt_words.append(w)
            owner.append(k)
    cap_words = [w for w, _, _ in cap]
    out = [-1] * len(caption)
    if cap_words == utt_words:
        pairs = zip(range(len(cap)), range(len(cap)))
    else:
        blocks = difflib.SequenceMatcher(None, cap_words, utt_words, autojunk=False).get_matching_blocks()
        pairs = ((a + d, b + d) for a, b, n in blocks for d in range(n))
    for i, j in pairs:
        _, s, e = cap[i]
        out[s:e] = [owner[j]] * (e - s)
    return out


def phrase_interval(
    start: int, end: int, char_utterance: list[int], utterances: list[Utterance]
) -> tuple[float, float] | None:
    """Union ``(T1, T2)`` of the intervals of the utterances covering caption characters
    ``[start, end)``; None when none of them was aligned."""
    ks = {k for k in char_utterance[start:end] if k >= 0}
    if not ks:
        return None
    return min(utterances[k].start_time for k in ks), max(utterances[k].end_time for k in ks)


def _match_words(cap_words: list[str], utt_words: list[str]) -> Iterable[tuple[int, int]]:
    """(caption word, utterance word) index pairs: all when the word lists are equal, else the
    longest common runs (difflib), as :func:`align_utterances` matches them."""
    if cap_words == utt_words:
        return zip(range(len(cap_words)), range(len(cap_words)))
    blocks = difflib.SequenceMatcher(None, cap_words, utt_words, autojunk=False).get_matching_blocks()
    return ((a + d, b + d) for a, b, n in blocks for d in range(n))


def align_words(caption: str, utterances: list[Utterance]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caption words and the utterance each was spoken in (the word form of :func:`align_utterances`).

    The utterance texts are joined by newlines (never inside a word) and scanned once.

    Returns:
        W word starts, W word ends (character spans in the caption), W utterance indices (-1: none);
        int64 arrays.
    """
    cap = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(caption)]
    joined = "\n".join(u.utterance for u in utterances)
    found = [(m.group().lower(), m.start()) for m in _WORD.finditer(joined)]
    offsets = np.cumsum([0] + [len(u.utterance) + 1 for u in utterances[:-1]])
    owner = np.searchsorted(offsets, np.array([p for _, p in found], dtype=np.int64), side="right") - 1
    word_utt = np.full(len(cap), -1, dtype=np.int64)
    pairs = list(_match_words([w for w, _, _ in cap], [w for w, _ in found]))
    if pairs:
        ci, uj = np.array(pairs, dtype=np.int64).T
        word_utt[ci] = owner[uj]
    starts = np.array([s for _, s, _ in cap], dtype=np.int64)
    ends = np.array([e for _, _, e in cap], dtype=np.int64)
    return starts, ends, word_utt


def phrase_intervals(
    caption: str, utterances: list[Utterance], spans: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`phrase_interval` of every span ``[start, end)`` of ``caption`` at once.

    A span's utterances are those of the aligned words sharing a character with it; ``(T1, T2)``
    is the min start / max end time over them.

    Returns:
        F ``T1``, F ``T2`` (float64; inf / -inf where not aligned), F bool "aligned".
    """
    n = len(spans)
    if not n or not utterances:
        return np.full(n, np.inf), np.full(n, -np.inf), np.zeros(n, dtype=bool)
    ws, we, wu = align_words(caption, utterances)
    span = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    hit = (ws[None, :] < span[:, 1:2]) & (we[None, :] > span[:, 0:1]) & (wu >= 0)[None, :]  # F x W
    times = np.array([(u.start_time, u.end_time) for u in utterances], dtype=np.float64).reshape(-1, 2)
    idx = np.maximum(wu, 0)
    t1 = np.min(np.broadcast_to(times[idx, 0], hit.shape), axis=1, where=hit, initial=np.inf)
    t2 = np.max(np.broadcast_to(times[idx, 1], hit.shape), axis=1, where=hit, initial=-np.inf)
    return t1, t2, hit.any(axis=1)
