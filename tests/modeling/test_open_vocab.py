import math

import pytest
import torch
import torch.nn.functional as F

from omniseg.modeling.heads.open_vocab import OpenVocabClassifier, OpenVocabConfig, cosine_logits


def _reference_cosine(features, embeddings, tau):
    out = torch.zeros(features.shape[0], embeddings.shape[0])
    for i, f in enumerate(features):
        for k, e in enumerate(embeddings):
            nf, ne = f.norm(), e.norm()
            out[i, k] = 0.0 if nf == 0 or ne == 0 else (f @ e) / (nf * ne) / tau
    return out


def test_cosine_logits_hand_worked():
    f = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    e = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    out = cosine_logits(f, e, 0.5)
    s = math.sqrt(2) / 2 / 0.5
    expected = torch.tensor([[2.0, 0.0, s, 0.0], [0.0, 2.0, s, 0.0]])
    torch.testing.assert_close(out, expected)


def test_cosine_logits_against_reference():
    g = torch.Generator().manual_seed(0)
    f, e = torch.randn(7, 5, generator=g), torch.randn(4, 5, generator=g)
    torch.testing.assert_close(cosine_logits(f, e, 0.07), _reference_cosine(f, e, 0.07))
    assert cosine_logits(torch.zeros(0, 5), e, 1.0).shape == (0, 4)
    assert cosine_logits(f, torch.zeros(0, 5), 1.0).shape == (7, 0)


def _clf(**kw) -> OpenVocabClassifier:
    torch.manual_seed(0)
    return OpenVocabClassifier(OpenVocabConfig(in_channels=6, embed_dim=4, **kw))


def test_region_features_with_zero_background():
    clf = _clf()
    x, vocab = torch.randn(5, 6), torch.randn(3, 4)
    logits = clf(x, vocab)
    assert logits.shape == (5, 4)
    assert torch.equal(logits[:, 3], torch.zeros(5))  # fixed zero background: cos = 0
    proj = x @ clf.proj.weight.t() + clf.proj.bias
    torch.testing.assert_close(logits[:, :3], _reference_cosine(proj, vocab, 0.01))
    assert list(clf.parameters()) == [clf.proj.weight, clf.proj.bias]  # tau and background fixed
    torch.testing.assert_close(clf.temperature(), torch.tensor(0.01))


def test_dense_map_is_a_1x1_conv():
    clf = _clf(background="none")
    x, vocab = torch.randn(2, 6, 3, 5), torch.randn(3, 4)
    logits = clf(x, vocab)
    assert logits.shape == (2, 3, 3, 5)
    proj = F.conv2d(x, clf.proj.weight[:, :, None, None], clf.proj.bias)
    ref = _reference_cosine(proj.permute(0, 2, 3, 1).reshape(-1, 4), vocab, 0.01)
    torch.testing.assert_close(logits.permute(0, 2, 3, 1).reshape(-1, 3), ref)
    torch.testing.assert_close(clf.project(x, channel_dim=1), proj)


def test_vocabulary_swap_without_retraining():
    clf = _clf().eval()
    x = torch.randn(4, 6)
    a, b, c = torch.randn(3, 4).unbind(0)
    first = clf(x, torch.stack([a, b]))
    second = clf(x, torch.stack([c, a, 5 * b]))  # new vocabulary, other order, unnormalized
    torch.testing.assert_close(second[:, 1], first[:, 0])
    torch.testing.assert_close(second[:, 2], first[:, 1])
    torch.testing.assert_close(second[:, 3], first[:, 2])  # background stays last
    only_bg = clf(x, torch.zeros(0, 4))
    assert only_bg.shape == (4, 1) and torch.equal(only_bg, torch.zeros(4, 1))


def test_learned_temperature_and_background_get_gradients():
    clf = _clf(temperature=0.07, temperature_kind="learned", background="learned")
    torch.testing.assert_close(clf.temperature(), torch.tensor(0.07))
    x, vocab = torch.randn(2, 6, 2, 2), torch.randn(3, 4)
    logits = clf(x, vocab)
    assert logits.shape == (2, 4, 2, 2)
    target = torch.tensor([[[0, 3], [3, 1]], [[2, 3], [3, 3]]])
    F.cross_entropy(logits, target).backward()
    for name, p in clf.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {n for n, _ in clf.named_parameters()} == {
        "proj.weight",
        "proj.bias",
        "log_logit_scale",
        "bg_embedding",
    }


def test_learned_temperature_is_clamped_but_fixed_is_not():
    learned = _clf(temperature=0.001, temperature_kind="learned")
    torch.testing.assert_close(learned.temperature(), torch.tensor(0.01))  # 1 / tau <= 100
    fixed = _clf(temperature=0.001)
    torch.testing.assert_close(fixed.temperature(), torch.tensor(0.001))


def test_training_step_lowers_contrastive_loss():
    clf = _clf(temperature=0.1)
    x, vocab, target = torch.randn(8, 6), torch.randn(3, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.SGD(clf.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(clf(x, vocab), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_state_dict_round_trip_and_buffers():
    clf = _clf()
    assert set(clf.state_dict()) == {"proj.weight", "proj.bias", "log_logit_scale"}
    other = _clf()
    other.load_state_dict(clf.state_dict())
    x, vocab = torch.randn(3, 6), torch.randn(2, 4)
    torch.testing.assert_close(other(x, vocab), clf(x, vocab))


def test_bad_inputs():
    clf = _clf()
    with pytest.raises(ValueError, match="N_cls x 4"):
        clf(torch.randn(2, 6), torch.randn(3, 5))
    with pytest.raises(ValueError, match="channels"):
        clf(torch.randn(2, 7), torch.randn(3, 4))
    with pytest.raises(ValueError, match="temperature"):
        _clf(temperature=0.0)
    with pytest.raises(ValueError, match="background"):
        _clf(background="mean")


def test_autocast_bfloat16():
    clf = _clf()
    x, vocab = torch.randn(2, 6, 3, 3), torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = clf(x, vocab)
    assert out.shape == (2, 6, 3, 3) and torch.isfinite(out).all()
    # cosines are within [-1, 1], so |logit| <= 1 / tau = 100 up to rounding
    assert out.float().abs().max() <= 100.5
    torch.testing.assert_close(out.float(), clf(x, vocab), atol=2.0, rtol=0.05)
