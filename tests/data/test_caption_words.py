"""Caption words (openseg Sec. 3.2): nouns + adjectives by the curation's spaCy tagger, cached; random word drop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from omniseg.data.caption_words import CaptionWords, drop_words

CAPTION = "a large crimson disk to the left of a small blue ring on grass"


@pytest.fixture(scope="module")
def spacy_ready():
    pytest.importorskip("spacy")
    from omniseg.curate.pos import available_model

    try:
        available_model()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize(("kinds", "caption", "words"), [
    ("noun_adj", CAPTION, ["large", "crimson", "disk", "left", "small", "blue", "ring", "grass"]),
    ("noun_adj", "one thing lying on grass and sand", ["thing", "grass", "sand"]),
    ("noun_adj_verb", "one thing lying on grass and sand", ["thing", "lying", "grass", "sand"]),
    ("all", "one thing lying on grass, and sand.", ["one", "thing", "lying", "on", "grass", "and", "sand"]),
])
def test_words_of_a_known_caption(spacy_ready, kinds, caption, words):
    assert CaptionWords(kinds)(caption) == words


def _fake_tagger(calls):
    def tag(texts):
        calls.append(list(texts))
        return [[SimpleNamespace(text=w, pos="ADJ" if w in ("Red", "big") else ("DET" if w == "a" else "NOUN"))
                 for w in t.split()] for t in texts]
    return tag


def test_each_caption_is_tagged_once_and_prefetch_batches():
    calls: list[list[str]] = []
    cw = CaptionWords("noun_adj", tagger=_fake_tagger(calls))
    cw.prefetch(["a Red disk", "a big ring", "a Red disk"])
    assert calls == [["a Red disk", "a big ring"]]
    assert cw("a Red disk") == ["red", "disk"] and cw("a big ring") == ["big", "ring"]
    assert cw("sky a") == ["sky"]
    assert calls == [["a Red disk", "a big ring"], ["sky a"]]
    with pytest.raises(ValueError, match="word kinds"):
        CaptionWords("verbs")  # type: ignore[arg-type]


def test_drop_words_with_a_seeded_generator():
    words = ["a", "b", "c", "d"]
    # torch.rand(4) from seed 0 is [0.4963, 0.7682, 0.0885, 0.1320]: kept where < 0.5
    assert drop_words(words, 0.5, torch.Generator().manual_seed(0)) == ["a", "c", "d"]
    assert drop_words(words, 0.45, torch.Generator().manual_seed(0)) == ["c", "d"]
    assert drop_words(words, 1.0) == words and drop_words(words, 0.0) == [] and drop_words([], 0.5) == []
    many = [str(k) for k in range(20000)]
    assert abs(len(drop_words(many, 0.5, torch.Generator().manual_seed(1))) / len(many) - 0.5) < 0.02
    with pytest.raises(ValueError, match="keep_prob"):
        drop_words(words, 1.5)
