"""Region-phrase contrastive loss vs a reference, hand-worked values, candidates and the embedder cache."""

from __future__ import annotations

import math

import pytest
import torch

from omniseg.modeling.contrastive_classifier import (
    PhraseEmbedder,
    batch_phrases,
    contrastive_phrase_loss,
    phrase_logits,
)


def reference_loss(features, phrases, targets, tau, alpha):
    """Loop over locations: explicit cosines, explicit softmax, explicit alpha weighting."""
    k = phrases.shape[0]
    total, num_pos = 0.0, 0
    for f, t in zip(features.tolist(), targets.tolist()):
        nf = math.sqrt(sum(v * v for v in f))
        logits = []
        for e in phrases.tolist():
            ne = math.sqrt(sum(v * v for v in e))
            logits.append(sum(a * b for a, b in zip(f, e)) / (nf * ne) / tau)
        logits.append(0.0)  # the zero background embedding: cosine 0
        mx = max(logits)
        log_z = mx + math.log(sum(math.exp(v - mx) for v in logits))
        logp = logits[t] - log_z
        if t == k:
            total += -alpha * logp
        else:
            total += -logp
            num_pos += 1
    return total / max(num_pos, 1)


@pytest.mark.parametrize("tau,alpha", [(0.01, 0.1), (0.5, 1.0), (0.07, 0.0)])
def test_loss_matches_reference(tau, alpha):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 8, generator=g, dtype=torch.float64)
    phrases = torch.randn(5, 8, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 6, (30,), generator=g)
    targets[:3] = 5  # some background for sure
    got = contrastive_phrase_loss(phrase_logits(feats, phrases, tau), targets, alpha)
    assert got.item() == pytest.approx(reference_loss(feats, phrases, targets, tau, alpha), rel=1e-6)


def test_hand_worked_alpha_and_tau():
    # 2-d features; phrase e0 = (1, 0). Location A = (1, 0) is positive for e0, location B = (0, 1)
    # is background. tau = 0.5:
    #   A: logits (cos 1 / 0.5, 0) = (2, 0) -> -log(e^2 / (e^2 + 1)) = log(1 + e^-2)
    #   B: logits (0, 0) -> -log(1/2) = log 2, scaled by alpha = 0.1
    # normalizer: 1 positive
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = phrase_logits(feats, torch.tensor([[1.0, 0.0]]), tau=0.5)
    assert logits.tolist() == [[2.0, 0.0], [0.0, 0.0]]
    loss = contrastive_phrase_loss(logits, torch.tensor([0, 1]), alpha=0.1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)) + 0.1 * math.log(2), rel=1e-6)
    # alpha = 0 removes the background term; the normalizer divides
    loss0 = contrastive_phrase_loss(logits, torch.tensor([0, 1]), alpha=0.0, normalizer=4.0)
    assert loss0.item() == pytest.approx(math.log(1 + math.exp(-2)) / 4, rel=1e-6)


def test_background_logit_is_zero_and_layout():
    feats = torch.randn(7, 4)
    logits = phrase_logits(feats, torch.randn(3, 4), tau=0.01)
    assert logits.shape == (7, 4) and (logits[:, 3] == 0).all()
    assert logits.abs().max() <= 100 + 1e-4  # |cos| / tau
    assert phrase_logits(feats, torch.zeros(0, 4)).shape == (7, 1)
    with pytest.raises(ValueError):
        phrase_logits(feats, torch.randn(3, 5))


def test_valid_mask_and_empty_and_no_positives():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 2, 0, 2])
    valid = torch.tensor([True, True, True, True, False, False])
    bad = logits.detach().clone()
    bad[4:] = float("nan")  # invalid rows may hold anything
    a = contrastive_phrase_loss(logits, targets, 0.1, valid)
    b = contrastive_phrase_loss(logits[:4], targets[:4], 0.1)
    assert torch.allclose(a, b)
    assert torch.isfinite(contrastive_phrase_loss(bad, targets, 0.1, valid))
    a.backward()
    assert (logits.grad[4:] == 0).all() and logits.grad[:4].abs().sum() > 0
    # only background: normalizer 1, loss = alpha * sum of bg NLL
    only_bg = contrastive_phrase_loss(torch.zeros(4, 3), torch.full((4,), 2), alpha=0.1)
    assert only_bg.item() == pytest.approx(0.1 * 4 * math.log(3), rel=1e-6)
    empty = contrastive_phrase_loss(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError):
        contrastive_phrase_loss(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_batch_phrases_dedup_in_first_seen_order():
    phrases, cols = batch_phrases([["cat", "red ring", "cat"], [], ["dog", "red ring"]])
    assert phrases == ["cat", "red ring", "dog"]
    assert [c.tolist() for c in cols] == [[0, 1, 0], [], [2, 1]]
    assert batch_phrases([]) == ([], [])


def test_phrase_embedder_caches_and_checks():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.stack([torch.full((3,), float(len(t))) for t in texts])

    emb = PhraseEmbedder(encode, 3)
    out = emb(["ab", "abc", "ab"])
    assert out.shape == (3, 3) and out[:, 0].tolist() == [2.0, 3.0, 2.0]
    assert calls == [["ab", "abc"]]
    emb(["abc", "x"])
    assert calls[-1] == ["x"]
    assert emb([]).shape == (0, 3)
    wrong = PhraseEmbedder(lambda t: torch.zeros(len(t), 4), 3)
    with pytest.raises(ValueError):
        wrong(["a"])
