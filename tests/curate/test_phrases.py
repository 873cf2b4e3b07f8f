"""Phrase extraction on hand-tagged sentences (no tagger involved) and caption/utterance alignment."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from omniseg.curate.phrases import (
    DEFAULT_STUFF,
    _words,
    align_utterances,
    candidate_phrases,
    extract_phrases,
    phrase_interval,
    phrase_intervals_batch,
)
from omniseg.curate.pos import TaggedToken
from omniseg.data.records import Utterance

_spec = importlib.util.spec_from_file_location("_pos_tests", Path(__file__).with_name("test_pos.py"))
_pos_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pos_tests)
HAND_TAGGED, parse_hand_tagged = _pos_tests.HAND_TAGGED, _pos_tests.parse_hand_tagged


def phrases_of(i: int, **kw) -> tuple[list[str], dict]:
    text, toks = parse_hand_tagged(HAND_TAGGED[i])
    kept, dropped = extract_phrases(text, toks, **kw)
    for p in kept:
        assert text[p.start : p.end].lower() == p.text
    return [p.text for p in kept], dropped


def test_hand_worked_phrases():
    assert phrases_of(0) == (["woman", "wooden bench"], {"stuff": 0, "non_object": 1})
    assert phrases_of(2) == (["tall trees"], {"stuff": 1, "non_object": 1})  # background, blue sky
    assert phrases_of(8)[0] == ["laptop", "mouse", "keyboard", "table"]  # commas split runs
    assert phrases_of(14)[0] == ["kitchen", "white refrigerator", "microwave oven"]  # consecutive nouns
    assert phrases_of(16)[0] == ["traffic light", "pole"]  # "right side": head "side" is a picture part
    assert phrases_of(20) == ([], {"stuff": 1, "non_object": 0})  # "cloudy": adjective without a noun
    assert phrases_of(21)[0] == ["baseball player", "bat"]


def test_stuff_filter_uses_the_head_noun_and_is_configurable():
    text, toks = parse_hand_tagged("a water/N bottle/N near the water/N and blue/A sky/N")
    assert [p.text for p in extract_phrases(text, toks)[0]] == ["water bottle"]
    kept, dropped = extract_phrases(text, toks, stuff=["bottle"], non_object=[])
    assert [p.text for p in kept] == ["water", "blue sky"] and dropped == {"stuff": 1, "non_object": 0}
    assert {"sky", "water", "grass", "wall"} <= set(DEFAULT_STUFF)
    # plural stuff through the lemma
    toks = [TaggedToken("Clouds", 0, "NOUN", "cloud")]
    assert extract_phrases("Clouds", toks, stuff=["cloud"])[0] == []


def test_candidate_phrases_reference():
    """Against an obvious reference: maximal ADJ* NOUN+ runs over random tag sequences."""
    rng = random.Random(0)
    for _ in range(300):
        tags = [rng.choice(["ADJ", "NOUN", "PROPN", "DET", "VERB"]) for _ in range(rng.randint(0, 9))]
        words = [f"w{i}" for i in range(len(tags))]
        text = " ".join(words)
        toks, pos = [], 0
        for w, t in zip(words, tags):
            toks.append(TaggedToken(w, pos, t, w))
            pos += len(w) + 1
        want, cur = [], []
        for w, t in zip(words, tags):  # reference: scan, restart at any break
            is_noun = t in ("NOUN", "PROPN")
            if t == "ADJ":
                if cur and any(x[1] for x in cur):  # adjective after nouns ends the phrase
                    want.append(" ".join(x[0] for x in cur))
                    cur = []
                cur.append((w, False))
            elif is_noun:
                cur.append((w, True))
            else:
                if any(x[1] for x in cur):
                    want.append(" ".join(x[0] for x in cur))
                cur = []
        if any(x[1] for x in cur):
            want.append(" ".join(x[0] for x in cur))
        assert [p.text for p in candidate_phrases(text, toks)] == want, tags


def test_hyphenated_compounds_are_one_word():
    # "a five-pointed star" tokenized as spaCy does: five - pointed star
    toks = [
        TaggedToken("a", 0, "DET"),
        TaggedToken("five", 2, "NUM", space_after=False),
        TaggedToken("-", 6, "PUNCT", space_after=False),
        TaggedToken("pointed", 7, "VERB"),
        TaggedToken("star", 15, "NOUN"),
    ]
    (p,), _ = extract_phrases("a five-pointed star", toks)
    assert (p.text, p.start, p.end, p.head) == ("five-pointed star", 2, 19, "star")
    toks = [TaggedToken("T", 0, "NOUN", space_after=False), TaggedToken("-", 1, "PUNCT", space_after=False),
            TaggedToken("shirt", 2, "NOUN")]
    assert [p.text for p in extract_phrases("T-shirt", toks)[0]] == ["t-shirt"]


def test_empty_caption():
    assert extract_phrases("", []) == ([], {"stuff": 0, "non_object": 0})
    assert align_utterances("", []) == []


def test_align_utterances_multiword_punctuation_and_case():
    caption = "In this image, a Red car."
    utts = [Utterance("In this", 0.0, 0.5), Utterance("image,", 0.5, 1.0), Utterance("a", 1.0, 1.25),
            Utterance("red", 1.25, 1.5), Utterance("car.", 1.5, 2.0)]
    m = align_utterances(caption, utts)
    assert len(m) == len(caption)
    want = [0] * 2 + [-1] + [0] * 4 + [-1] + [1] * 5 + [-1, -1, 2, -1, 3, 3, 3, -1, 4, 4, 4, -1]
    assert m == want
    start = caption.index("Red")
    assert phrase_interval(start, start + 7, m, utts) == (1.25, 2.0)
    assert phrase_interval(2, 3, m, utts) is None  # a space: no utterance


def test_align_utterances_tolerates_transcript_differences():
    caption = "a very red car"
    utts = [Utterance("a", 0.0, 0.1), Utterance("red", 0.5, 0.7), Utterance("car", 0.8, 1.0)]
    m = align_utterances(caption, utts)
    s = caption.index("red car")
    assert phrase_interval(s, s + 7, m, utts) == (0.5, 1.0)
    assert all(k in (1, 2) for k in m[s : s + 7] if k >= 0)
    # nothing in common: nothing aligned
    assert set(align_utterances("xyz", utts)) == {-1}


def _reference_candidates(caption: str, tokens: list[TaggedToken]) -> list[tuple[str, int, int, str, str]]:
    """The word-by-word scan candidate_phrases replaced (slow, obvious): ADJ* then NOUN+ from each word."""
    words = _words(tokens)
    out, i = [], 0
    while i < len(words):
        j = i
        while j < len(words) and words[j][1] == "ADJ":
            j += 1
        k = j
        while k < len(words) and words[k][1] in ("NOUN", "PROPN"):
            k += 1
        if k > j:
            head_tok = words[k - 1][0]
            end = head_tok[-1].start + len(head_tok[-1].text)
            head = caption[head_tok[0].start : end].lower()
            lemma = head if len(head_tok) > 1 else (head_tok[0].lemma or head)
            out.append((caption[words[i][0][0].start : end].lower(), words[i][0][0].start, end, head, lemma))
            i = k
        else:
            i = max(j, i + 1)
    return out


def test_candidate_phrases_equal_the_word_scan_with_hyphens():
    rng = random.Random(5)
    for _ in range(500):
        caption, toks = "", []
        for _ in range(rng.randint(0, 10)):
            text = rng.choice(["red", "Big", "ball", "T", "-", "shirt", "the", "five", "pointed"])
            if caption and rng.random() < 0.6:
                caption += " "
            toks.append(TaggedToken(text, len(caption), rng.choice(["ADJ", "NOUN", "PROPN", "DET", "PUNCT", "NUM"]),
                                    rng.choice(["", text.lower() + "s"])))
            caption += text
        toks = [TaggedToken(t.text, t.start, t.pos, t.lemma, caption[t.end : t.end + 1] == " ") for t in toks]
        got = [(p.text, p.start, p.end, p.head, p.head_lemma) for p in candidate_phrases(caption, toks)]
        assert got == _reference_candidates(caption, toks), (caption, toks)


def test_phrase_intervals_batch_equals_the_per_character_reference():
    """All spans of several captions at once against align_utterances + phrase_interval per span:
    multi-word and empty utterances, punctuation, case, transcript edits, no utterances, spans
    over spaces or past the last word."""
    rng = random.Random(6)
    vocab = ["a", "Red", "red", "car", "in", "this", "image", "x1", "café", "don't", "-", ",", "__"]
    captions, utterances, spans, want = [], [], [], []
    for _ in range(300):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 10))]
        caption = " ".join(words) + rng.choice(["", ".", " "])
        utts, t = [], 0.0
        i = 0
        while i < len(words) and rng.random() < 0.95:
            k = rng.randint(0, 3)
            text = " ".join(words[i : i + k]) if rng.random() < 0.8 else rng.choice(["other", "", "RED car", ","])
            utts.append(Utterance(text, t, t + rng.choice([0.0, 0.25, 0.5])))
            t += 0.25
            i += max(k, 1)
        sp = [tuple(sorted((rng.randint(0, len(caption)), rng.randint(0, len(caption))))) for _ in range(rng.randint(0, 4))]
        sp = [(s, e) for s, e in sp if e > s]
        char_utt = align_utterances(caption, utts)
        for s, e in sp:
            want.append(phrase_interval(s, e, char_utt, utts))
        captions.append(caption)
        utterances.append(utts)
        spans.append(sp)
    t1, t2, aligned = phrase_intervals_batch(captions, utterances, spans)
    got = [(a, b) if ok else None for a, b, ok in zip(t1.tolist(), t2.tolist(), aligned.tolist())]
    assert got == want
    assert sum(w is None for w in want) > 20 and sum(w is not None for w in want) > 100
    t1, t2, aligned = phrase_intervals_batch([], [], [])
    assert t1.shape == t2.shape == aligned.shape == (0,)
