"""OpenSeg (openseg paper Sec. 3): head shapes, mask logits / region features / inference against written-out
references, query ensembling, one-step overfit on a tiny batch, prediction shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omniseg.data.batch import collate
from omniseg.data.dataset import synth_dataset
from omniseg.data.synth.world import SynthConfig
from omniseg.modeling.contrastive_classifier import PhraseEmbedder
from omniseg.modeling.openseg import (
    OpenSegConfig,
    build_openseg,
    ensemble_max,
    mask_regions,
    select_pseudo_masks,
    split_queries,
)
from omniseg.modeling.openseg_heads import (
    FeatureHead,
    LearnedPositions,
    QueryDecoder,
    mask_logits,
    resize_valid,
    valid_mask,
)
from omniseg.ops.openseg_losses import grounding_loss, grounding_scores
from omniseg.text.encoders import HashEncoder

TINY = dict(backbone="resnet18_fpn", width=8, fpn_channels=16, norm="GN", freeze_at=0, embed_dim=16, mask_dim=16,
            head_channels=16, gn_groups=4, num_queries=6, decoder_heads=2, pos_size=16)


def tiny_model(**kw):
    torch.manual_seed(0)
    model = build_openseg(OpenSegConfig(**{**TINY, **kw}))
    model.set_text_embedder(PhraseEmbedder(HashEncoder(16).encode, 16))
    model.set_caption_words(lambda caption: caption.split())
    return model


@pytest.fixture(scope="module")
def batch():
    ds = synth_dataset(SynthConfig(seed=3, num_images=2, image_size=64), include_stuff=True)
    return collate([ds[0], ds[1]])


def test_head_shapes():
    model = tiny_model()
    x = torch.zeros(2, 3, 64, 96)
    f = model.pyramid(x)
    assert f.shape == (2, 16, 16, 24) and model.pyramid.stride == 4
    assert FeatureHead(16, 40, 8, num_convs=3, gn_groups=4)(f).shape == (2, 40, 16, 24)
    assert FeatureHead(16, 40, 8, num_convs=0)(f).shape == (2, 40, 16, 24)
    assert len([m for m in FeatureHead(16, 40, 8).modules() if isinstance(m, torch.nn.Conv2d)]) == 4  # fc + 3
    pe = LearnedPositions(16, 8)
    assert pe((8, 8)) is pe.embedding and pe((16, 24)).shape == (1, 16, 16, 24)
    valid = valid_mask([(64, 96), (30, 40)], (16, 24), 4)
    assert valid[0].all() and valid[1].sum() == 8 * 10 and valid[1, :8, :10].all()
    q = QueryDecoder(6, 16, num_layers=3, heads=2)(f, valid)
    assert q.shape == (2, 6, 16)
    enc = model.encode(torch.zeros(2, 3, 64, 96, dtype=torch.uint8), [(64, 96), (30, 40)])
    assert enc["masks"].shape == (2, 6, 16, 24) and enc["regions"].shape == (2, 6, 16)
    assert enc["pixels"].shape == (2, 16, 16, 24) and torch.equal(enc["valid"], valid)
    assert (torch.sigmoid(enc["masks"][1][:, ~valid[1]]) < 1e-9).all()  # padding is in no proposal


def test_a_padded_pixel_does_not_steer_the_queries():
    f = torch.randn(1, 16, 4, 4)
    valid = torch.zeros(1, 4, 4, dtype=torch.bool)
    valid[:, :2] = True
    dec = QueryDecoder(3, 16, heads=2).eval()
    g = f.clone()
    g[:, :, 2:] = 100.0
    assert torch.allclose(dec(f, valid), dec(g, valid), atol=1e-5)


def test_mask_logits_and_region_features_match_written_out_sums():
    torch.manual_seed(1)
    q, fs = torch.randn(2, 3, 4), torch.randn(2, 4, 5, 6)
    s = mask_logits(q, fs)
    for b, n, i, j in [(0, 0, 0, 0), (1, 2, 4, 5), (1, 1, 2, 3)]:
        assert math.isclose(float(s[b, n, i, j]), float(sum(q[b, n, d] * fs[b, d, i, j] for d in range(4)) / 2),
                            rel_tol=1e-5, abs_tol=1e-6)
    model = tiny_model()
    enc = model.encode(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), [(32, 32)])
    p, fz = torch.sigmoid(enc["masks"][0]), enc["pixels"][0]
    n = 2
    ref = sum(p[n, i, j] * fz[:, i, j] for i in range(8) for j in range(8)) / p[n].sum()  # Sec. 3.2, mean
    assert torch.allclose(enc["regions"][0, n], ref, atol=1e-4)


def test_mask_regions_match_written_out_means():
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 4, 5)
    masks = [torch.rand(2, 4, 5), torch.zeros(0, 4, 5)]
    regions, valid = mask_regions(masks, pixels)
    assert regions.shape == (2, 2, 3) and valid.tolist() == [[True, True], [False, False]]
    for n in range(2):
        m = masks[0][n]
        ref = sum(m[i, j] * pixels[0, :, i, j] for i in range(4) for j in range(5)) / m.sum()
        assert torch.allclose(regions[0, n], ref, atol=1e-5)
    assert not regions[1].any()


def test_grounding_on_the_true_masks_uses_them_as_the_regions(batch):
    model = tiny_model(grounding_regions="gt")
    torch.manual_seed(0)
    out = model(batch)
    torch.manual_seed(0)  # the forward draws nothing before the captions: the same caption and kept words
    words = model._caption_words(batch.captions)
    enc = model.encode(batch.images, batch.image_sizes)
    regions, valid = [], []
    for b, t in enumerate(batch.targets):  # the L_S targets: things + stuff, area-resized to the F_z grid
        keep = t.has_mask & ~t.is_crowd
        m = F.interpolate(t.masks[keep].float()[None], size=enc["pixels"].shape[-2:], mode="area")[0]
        regions.append(torch.stack([(mk[None] * enc["pixels"][b]).sum((1, 2)) / mk.sum() for mk in m]))
    n = max(len(r) for r in regions)
    z = torch.zeros(len(regions), n, regions[0].shape[1])
    valid = torch.zeros(len(regions), n, dtype=torch.bool)
    for b, r in enumerate(regions):
        z[b, : len(r)], valid[b, : len(r)] = r, True
    width = max(len(w) for w in words)
    w = torch.zeros(len(words), width, 16)
    wv = torch.zeros(len(words), width, dtype=torch.bool)
    for b, ws in enumerate(words):
        if ws:
            w[b, : len(ws)], wv[b, : len(ws)] = model.embed(ws), True
    ref = 2 * grounding_loss(grounding_scores(z, valid, w, wv, model.temperature()), valid=wv.any(1))
    assert wv.any() and torch.allclose(out["loss_grounding"], ref, atol=1e-5)
    assert not torch.allclose(out["loss_grounding"], tiny_model()(batch)["loss_grounding"])  # not the proposals


def test_query_ensembling():
    assert split_queries(["red circle|crimson disk", "grass", " sky | air |"]) == (
        ["red circle", "crimson disk", "grass", "sky", "air"], [0, 0, 1, 2, 2])
    with pytest.raises(ValueError, match="entry 1"):
        split_queries(["a", " | "])
    scores = torch.tensor([[1.0, 5.0], [3.0, 2.0], [0.0, -1.0]])
    assert torch.equal(ensemble_max(scores, [0, 0, 1], 2), torch.tensor([[3.0, 5.0], [0.0, -1.0]]))


@pytest.mark.parametrize("mode", ["proposals", "proposals_max", "pixels"])
def test_inference_modes_match_the_paper_by_hand(mode):
    torch.manual_seed(2)
    enc = {"masks": torch.randn(1, 3, 2, 2), "regions": torch.randn(1, 3, 5), "pixels": torch.randn(1, 5, 2, 2)}
    w = torch.randn(4, 5)
    y = tiny_model().query_scores(enc, 0, w, mode)
    assert y.shape == (4, 2, 2)
    for k in range(4):
        for i in range(2):
            for j in range(2):
                if mode == "pixels":  # Sec. 4.4: F_z . w per pixel
                    ref = F.cosine_similarity(w[k], enc["pixels"][0, :, i, j], dim=0)
                else:  # Sec. 3.4: y = <w, z> . s
                    terms = [F.cosine_similarity(w[k], enc["regions"][0, n], dim=0)
                             * torch.sigmoid(enc["masks"][0, n, i, j]) for n in range(3)]
                    ref = sum(terms) if mode == "proposals" else max(terms)
                assert math.isclose(float(y[k, i, j]), float(ref), rel_tol=1e-5, abs_tol=1e-6)


def test_resize_valid_crops_the_padding_then_resizes():
    m = torch.full((1, 4, 6), -30.0)  # padded image 8 x 12 at stride 2
    m[0, :2, :3] = 1.0  # the cells of a 3 x 5 image
    out = resize_valid(m, (3, 5), 2, (6, 10))
    assert out.shape == (1, 6, 10) and torch.allclose(out, torch.ones(1, 6, 10))
    m[0, 0, 0] = 5.0
    out = resize_valid(m, (4, 4), 2, (4, 4))  # upsampled x2, bilinear (align_corners=False): 0.75 / 0.25 blends
    assert torch.allclose(out[0, 0], torch.tensor([5.0, 4.0, 2.0, 1.0]))
    assert math.isclose(float(out[0, 1, 1]), 0.75 * 0.75 * 5 + (1 - 0.75 * 0.75) * 1, rel_tol=1e-6)


def test_training_losses_and_one_step_overfit(batch):
    model = tiny_model()
    out = model(batch)
    assert set(out) == {"loss_grounding", "loss_seg", "tau", "num_words"}
    assert 0 < float(out["loss_seg"].detach()) <= 1 and float(out["loss_grounding"].detach()) > 0
    assert math.isclose(float(out["tau"]), 0.07, rel_tol=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        torch.manual_seed(0)  # the same caption and kept words every step
        losses = model(batch)
        loss = losses["loss_grounding"] + losses["loss_seg"]
        first = first or (float(losses["loss_grounding"].detach()), float(losses["loss_seg"].detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(losses["loss_seg"].detach()) < 0.8 * first[1]
    assert float(losses["loss_grounding"].detach()) < 0.5 * first[0]


def test_every_word_dropped_leaves_no_grounding_loss(batch):
    out = tiny_model(keep_prob=0.0)(batch)
    assert float(out["loss_grounding"].detach()) == 0.0 and float(out["num_words"]) == 0.0
    out["loss_grounding"].backward()  # still in the graph


def test_predict_shapes(batch):
    model = tiny_model().eval()
    out = model.predict(batch.images, ["red circle|crimson disk", "grass", "sky"], batch.image_sizes, [(32, 48), (64, 64)])
    assert len(out) == 2
    for (sem, inst), size in zip(out, [(32, 48), (64, 64)]):
        assert sem.shape == (3, *size) and torch.isfinite(sem).all()
        assert inst.masks.shape[1:] == size and len(inst) <= 6 and (inst.labels < 3).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all() and ((inst.scores > 0) & (inst.scores <= 1)).all()


def test_grounding_weight_zero_is_the_ls_only_teacher(batch):
    def no_captions(caption):
        raise AssertionError("the L_S-only teacher reads no caption")

    ref = tiny_model()(batch)
    teacher = tiny_model(grounding_weight=0.0)
    teacher.set_caption_words(no_captions)
    out = teacher(batch)
    assert set(out) == {"loss_seg", "tau", "num_words"}  # no loss_grounding: the trainer sums L_S alone
    assert torch.allclose(out["loss_seg"], ref["loss_seg"])  # the same weights (seed 0) and masks: the same L_S
    half, full = tiny_model(grounding_weight=0.5), tiny_model()
    torch.manual_seed(0)  # the same captions and kept words
    a = half(batch)["loss_grounding"]
    torch.manual_seed(0)
    assert float(a.detach()) > 0 and torch.allclose(a, 0.5 * full(batch)["loss_grounding"])


def test_select_pseudo_masks_by_hand():
    probs = torch.full((5, 4, 4), 0.1)
    probs[0, :2] = 0.9  # rows 0-1, 8 px, score 0.9
    probs[1, :2], probs[1, 2, 0] = 0.7, 0.7  # the same region + 1 px: IoU 8/9 with 0 -> dropped
    probs[2, 2:] = 0.8  # rows 2-3, score 0.8
    probs[3] = 0.4  # below 0.5 everywhere: empty
    probs[4, 3, 3] = 0.99  # 1 px: the most confident, too small for min_area 2/16
    masks, scores = select_pseudo_masks(probs, top_k=0, min_area=2 / 16)
    assert torch.equal(masks, torch.stack([probs[0] > 0.5, probs[2] > 0.5])) and torch.allclose(
        scores, torch.tensor([0.9, 0.8]))
    masks, scores = select_pseudo_masks(probs, top_k=1, min_area=2 / 16)
    assert torch.equal(masks, (probs[:1] > 0.5)) and torch.allclose(scores, torch.tensor([0.9]))
    masks, scores = select_pseudo_masks(probs, top_k=0, iou_threshold=0.9, min_area=0.0)  # 1 px kept, 1 not merged
    assert torch.allclose(scores, torch.tensor([0.99, 0.9, 0.8, 0.7]))
    assert select_pseudo_masks(torch.zeros(0, 4, 4), top_k=3)[0].shape == (0, 4, 4)


def test_losses_under_bf16_autocast_are_fp32_and_match_fp32(batch, assert_bf16_close):
    # train.amp=bf16: trunk, heads and decoder run in bf16; L_S's Dice and L_G's similarities stay fp32
    assert_bf16_close(tiny_model(), batch)


def test_init_from_an_align_run_copies_its_trunk_tower_and_tau(tmp_path):
    from safetensors.torch import save_file

    from omniseg.modeling.align_baseline import ALIGNConfig, build_align
    from omniseg.utils.weights_io import CheckpointError

    align_kw = {k: TINY[k] for k in ("backbone", "width", "fpn_channels", "norm", "freeze_at", "embed_dim",
                                     "head_channels", "gn_groups")}
    torch.manual_seed(5)
    align = build_align(ALIGNConfig(**align_kw))
    with torch.no_grad():
        align.log_temperature.fill_(-2.0)
    save_file({k: v.contiguous() for k, v in align.state_dict().items()}, str(tmp_path / "model.safetensors"))
    plain, started = tiny_model(), tiny_model(init_from=str(tmp_path / "model.safetensors"))
    a, s, p = align.state_dict(), started.state_dict(), plain.state_dict()
    for k, v in a.items():  # Sec. 4.1: the backbone (here also the dense tower and tau) from the ALIGN checkpoint
        assert torch.equal(s[k.replace("head.", "emb_head.", 1) if k.startswith("head.") else k], v), k
    assert all(torch.equal(s[k], p[k]) for k in p if k.startswith(("seg_head.", "decoder.", "positions.")))
    first = next(k for k in p if k.startswith("emb_head."))
    assert not torch.equal(s[first], p[first])  # the tower was replaced, not left at its initialisation
    wide = build_align(ALIGNConfig(**{**align_kw, "embed_dim": 24}))
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(CheckpointError, match=r"wide.safetensors: not an ALIGN-style model for this OpenSeg config "
                                              r"\(\d+ tensors differ, e.g. emb_head\."):
        tiny_model(init_from=str(tmp_path / "wide.safetensors"))
