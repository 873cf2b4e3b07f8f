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
of its words"). :func:`phrase_intervals_batch` does that for all phrases of many captions at once
(word alignment, then word ranges by binary search and one reduction over them);
:func:`align_utterances` / :func:`phrase_interval` are the per-character, per-phrase form it is
tested against.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

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
    if "-" not in [tok.text for tok in tokens]:  # the usual caption: one word per token
        return [([tok], tok.pos) for tok in tokens]
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


#: a phrase as a run of word codes (a: adjective, n: noun, o: other)
_PHRASE_CODES = re.compile("a*n+")


def candidate_phrases(caption: str, tokens: Sequence[Token]) -> list[Phrase]:
    """All ``ADJ* NOUN+`` runs of ``tokens`` (a tagged ``caption``; :class:`TaggedToken` s or
    :class:`TokenRow` s), stuff not yet removed: the maximal matches, left to right, of ``a*n+``
    in the words' codes."""
    words = _words(tokens)
    codes = "".join(["n" if pos in NOUN_POS else "a" if pos in ADJ_POS else "o" for _, pos in words])
    out: list[Phrase] = []
    for m in _PHRASE_CODES.finditer(codes):
        i, k = m.span()
        first, head_tok = words[i][0][0], words[k - 1][0]
        end = head_tok[-1].start + len(head_tok[-1].text)
        head = caption[head_tok[0].start : end].lower()
        lemma = head if len(head_tok) > 1 else (head_tok[0].lemma or head)
        out.append(Phrase(caption[first.start : end].lower(), first.start, end, head, lemma))
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


def align_words(caption: str, utterances: list[Utterance]) -> tuple[list[tuple[int, int]], list[int]]:
    """Caption words and the utterance each was spoken in (the word form of :func:`align_utterances`).

    Returns:
        the W character spans of the caption words, and for each the index of its utterance (-1: none).
    """
    spans = [m.span() for m in _WORD.finditer(caption)]
    cap_words = _WORD.findall(caption)
    per_utterance = [_WORD.findall(u.utterance) for u in utterances]
    utt_words = [w for ws in per_utterance for w in ws]
    owner = [k for k, ws in enumerate(per_utterance) for _ in ws]  # the utterance of each utterance word
    if cap_words == utt_words:  # the usual transcript: the same words, even the same case
        return spans, owner
    word_utt = [-1] * len(cap_words)
    for i, j in _match_words([w.lower() for w in cap_words], [w.lower() for w in utt_words]):
        word_utt[i] = owner[j]
    return spans, word_utt


def _int_pairs(pairs: list[tuple[int, int]]) -> np.ndarray:
    """``pairs`` as an N x 2 int64 array."""
    return np.fromiter(chain.from_iterable(pairs), dtype=np.int64, count=2 * len(pairs)).reshape(-1, 2)


def phrase_intervals(
    caption: str, utterances: list[Utterance], spans: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`phrase_interval` of every span ``[start, end)`` of ``caption`` at once
    (:func:`phrase_intervals_batch` of one caption)."""
    return phrase_intervals_batch([caption], [utterances], [spans])


def phrase_intervals_batch(
    captions: Sequence[str], utterances: Sequence[list[Utterance]], spans: Sequence[Sequence[tuple[int, int]]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`phrase_interval` of every span ``[start, end)`` of every caption, all at once.

    A span's utterances are those of the aligned words sharing a character with it. The words
    and spans of all captions are put on one line (each caption shifted past the ones before it),
    so a span's words are a range of the sorted, disjoint words found by binary search; ``(T1, T2)``
    is the min start / max end time over the aligned words of the range (a reduction over the
    range, in word order).

    Returns:
        for the F spans of all captions in order: ``T1``, ``T2`` (float64; inf / -inf where not
        aligned), bool "aligned".
    """
    word_spans: list[tuple[int, int]] = []
    word_utt: list[int] = []
    times: list[tuple[float, float]] = []
    sizes = []  # per caption: characters (+1), words, utterances, spans
    for caption, utts, sp in zip(captions, utterances, spans):
        ws, wu = align_words(caption, utts)
        word_spans += ws
        word_utt += wu
        times += [(u.start_time, u.end_time) for u in utts]
        sizes.append((len(caption) + 1, len(ws), len(utts), len(sp)))
    n_chars, n_words, n_utts, n_spans = np.array(sizes, dtype=np.int64).reshape(-1, 4).T
    shift = np.cumsum(n_chars) - n_chars
    span = _int_pairs([s for sp in spans for s in sp]) + np.repeat(shift, n_spans)[:, None]
    words = _int_pairs(word_spans) + np.repeat(shift, n_words)[:, None]
    wu = np.array(word_utt, dtype=np.int64)
    spoken = wu >= 0
    wu = wu + np.repeat(np.cumsum(n_utts) - n_utts, n_words)  # numbered over all captions' utterances
    first = np.searchsorted(words[:, 1], span[:, 0], side="right")  # words ending after the span starts
    last = np.maximum(np.searchsorted(words[:, 0], span[:, 1], side="left"), first)  # ... and starting before it ends
    n_spoken = np.concatenate(([0], np.cumsum(spoken)))
    aligned = n_spoken[last] > n_spoken[first]
    t = np.fromiter(chain.from_iterable(times), dtype=np.float64, count=2 * len(times)).reshape(-1, 2)
    starts = np.full(len(wu) + 1, np.inf)  # one past the end: reduceat's last bound
    ends = np.full(len(wu) + 1, -np.inf)
    starts[:-1][spoken], ends[:-1][spoken] = t[wu[spoken], 0], t[wu[spoken], 1]
    bounds = np.stack((first, last), axis=1).ravel()
    t1 = np.where(aligned, np.minimum.reduceat(starts, bounds)[::2], np.inf) if len(bounds) else np.full(0, np.inf)
    t2 = np.where(aligned, np.maximum.reduceat(ends, bounds)[::2], -np.inf) if len(bounds) else np.full(0, -np.inf)
    return t1, t2, aligned
