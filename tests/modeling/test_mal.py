"""MAL's model (paper Sec. 3.2): decoders, per-size feature resizing (App. A.2), EMA teacher, losses,
box-prompted prediction."""

import pytest
import torch
from torch import nn

from omniseg.data.batch import Targets
from omniseg.modeling.mal import MAL, MALConfig, MaskNet
from omniseg.modeling.mal_decoders import AttentionDecoder, FCDecoder, FCNDecoder, PixelHead


def tiny_cfg(**kw) -> MALConfig:
    base = dict(encoder="vit_small", depth=1, crop_size=32, decoder_dim=16, fc_hidden=32, max_crops=0)
    return MALConfig(**{**base, **kw})


@pytest.mark.parametrize("decoder,out", [(AttentionDecoder(24, 16), 16), (FCNDecoder(24, 16), 16),
                                         (FCDecoder(24, 8, 12, hidden=32), 12)])
def test_decoder_output_shapes(decoder, out):
    assert decoder(torch.randn(3, 24, 8, 8)).shape == (3, 1, out, out)


def test_pixel_head_upsamples_between_the_second_and_third_conv():
    head = PixelHead(8, 16)
    seen = []
    for conv in head.convs:
        conv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    assert head(torch.randn(1, 8, 5, 5)).shape == (1, 16, 10, 10)
    assert seen == [(5, 5), (5, 5), (10, 10), (10, 10)]
    assert (head(torch.randn(2, 8, 5, 5)) >= 0).all()  # every conv followed by ReLU


def test_attention_decoder_is_max_pooled_key_dot_values():
    dec = AttentionDecoder(6, 4)
    x = torch.randn(2, 6, 3, 3)
    k = dec.key(x.flatten(2).max(dim=2).values)
    v = dec.value(x)
    want = torch.einsum("nc,nchw->nhw", k, v)[:, None] / 2  # scale 4 ** -0.5
    assert torch.allclose(dec(x), want, atol=1e-6)


def test_feature_map_resized_per_object_size():
    net = MaskNet(tiny_cfg(crop_size=64))  # ViT/16 map: 4 x 4
    seen = []
    net.decoder.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    out = net(torch.randn(3, 3, 64, 64), torch.tensor([2, 0, 2]))
    assert out.shape == (3, 64, 64)
    # App. A.2: small -> crop / 16, large -> crop / 4 (medium, crop / 8, absent)
    assert seen == [(1, 384, 4, 4), (2, 384, 16, 16)]
    seen.clear()
    flat = MaskNet(tiny_cfg(crop_size=64, scale_by_size=False))
    flat.decoder.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    assert flat(torch.randn(2, 3, 64, 64), torch.tensor([0, 2])).shape == (2, 64, 64)
    assert seen == [(2, 384, 4, 4)]


@pytest.mark.parametrize("decoder", ["fc", "fcn", "attention"])
def test_each_decoder_in_the_model(decoder):
    assert MaskNet(tiny_cfg(decoder=decoder))(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape == (2, 32, 32)


def test_resnet_encoder():
    net = MaskNet(tiny_cfg(encoder="resnet18", crop_size=64))
    assert net(torch.randn(1, 3, 64, 64), torch.tensor([1])).shape == (1, 64, 64)


def test_resnet_encoder_loads_the_committed_width16_trunk():
    from pathlib import Path

    from safetensors.torch import load_file

    trunk = Path(__file__).resolve().parents[2] / "bench/results/pretrained/r18w16_gn_dense/backbone.safetensors"
    net = MaskNet(tiny_cfg(encoder="resnet18", width=16, norm="GN", crop_size=64, pretrained=str(trunk)))
    saved = load_file(trunk)
    got = dict(net.encoder.named_parameters())
    key = next(k for k in got if k.endswith("conv1.weight"))
    assert torch.equal(got[key], saved["conv1.weight"])
    assert net(torch.randn(1, 3, 64, 64), torch.tensor([1])).shape == (1, 64, 64)


def _batch(boxes, image_size=48, flags=None):
    from omniseg.data.batch import Batch

    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(b)
    t = Targets(boxes=b, masks=torch.zeros(n, image_size, image_size, dtype=torch.uint8),
                has_box=torch.ones(n, dtype=torch.bool), box_exact=torch.ones(n, dtype=torch.bool),
                has_mask=torch.zeros(n, dtype=torch.bool), is_crowd=torch.zeros(n, dtype=torch.bool),
                is_thing=torch.ones(n, dtype=torch.bool), category_ids=torch.zeros(n, dtype=torch.long),
                texts=["x"] * n)
    for k, v in (flags or {}).items():
        setattr(t, k, v)
    img = torch.full((1, 3, image_size, image_size), 30, dtype=torch.uint8)
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    disk = ((xx + 0.5 - (x0 + x1) / 2) ** 2 + (yy + 0.5 - (y0 + y1) / 2) ** 2) <= ((x1 - x0) / 2) ** 2
    img[0, :, disk] = 220  # a bright disk filling its box's inscribed circle
    return Batch(images=img, image_sizes=[(image_size, image_size)], targets=[t], captions=[[]], image_ids=[0],
                 orig_sizes=[(image_size, image_size)], num_dropped=[0], sources=["t"], records=[None])


def test_training_boxes_exclude_crowd_approximate_and_tiny():
    model = MAL(tiny_cfg(min_box_size=3.0))
    batch = _batch([[4, 4, 20, 20], [1, 1, 30, 30], [2, 2, 40, 40], [5, 5, 7, 30], [6, 6, 26, 26]],
                   flags={"is_crowd": torch.tensor([False, True, False, False, False]),
                          "box_exact": torch.tensor([True, True, False, True, True])})
    kept = model._train_boxes(batch)[0]
    assert kept.tolist() == [[4, 4, 20, 20], [6, 6, 26, 26]]  # crowd, approximate, 2-px-wide dropped
    model.cfg.max_crops = 1
    assert len(model._train_boxes(batch)[0]) == 1


def test_teacher_is_an_ema_of_the_student_without_gradient():
    model = MAL(tiny_cfg())
    with torch.no_grad():
        for p in model.student.parameters():
            p.fill_(1.0)
        for p in model.teacher.parameters():
            p.fill_(0.0)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert not model.teacher.training
    losses = model(_batch([[8, 8, 40, 40]]))  # a forward leaves the teacher alone
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    for p in model.teacher.parameters():
        assert p.grad is None and torch.equal(p, torch.zeros_like(p))
    model.after_optimizer_step()  # what the trainer calls after each optimizer step
    for p in model.teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 1 - 0.996))  # 0.996 * 0 + 0.004 * 1
    model.after_optimizer_step()
    p = next(model.teacher.parameters())
    assert torch.allclose(p, torch.full_like(p, 0.996 * 0.004 + 0.004))
    assert any(k.startswith("teacher.") for k in model.state_dict())  # saved with the checkpoint


def test_switches_for_the_ablations():
    no_teacher = MAL(tiny_cfg(ema_teacher=False))
    assert no_teacher.teacher is None
    out = no_teacher(_batch([[8, 8, 40, 40]]))
    assert set(out) == {"loss_mil", "loss_crf", "num_crops"}
    assert set(MAL(tiny_cfg(use_crf=False))(_batch([[8, 8, 40, 40]]))) == {"loss_mil", "num_crops"}
    empty = MAL(tiny_cfg())(_batch([[8, 8, 9, 9]], flags={"has_box": torch.tensor([False])}))
    assert float(empty["loss_mil"].detach()) == 0 and empty["loss_mil"].requires_grad


def test_losses_decrease_on_one_crop(monkeypatch):
    import omniseg.modeling.mal as mal

    # one fixed crop: the expansion drawn once (θ = 0.6 split evenly) instead of per step
    monkeypatch.setattr(mal, "sample_expansion", lambda n, theta: mal.fixed_expansion(n, 0.6))
    torch.manual_seed(0)
    model = MAL(tiny_cfg(student_aug=False, theta=0.6))
    model.train()
    batch = _batch([[12, 12, 36, 36]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, betas=(0.9, 0.9))
    torch.manual_seed(1)
    history = []
    for _ in range(20):
        losses = model(batch)
        loss = losses["loss_mil"] + losses["loss_crf"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert max(history[-3:]) < 0.5 * history[0], history


class _Const(nn.Module):
    """A student whose logits are 1 everywhere (probability 0.731)."""

    def forward(self, crops, sizes=None):
        return torch.ones(crops.shape[0], crops.shape[-2], crops.shape[-1])


def test_predict_pastes_the_crop_back_and_scores_the_mask():
    model = MAL(tiny_cfg(crop_size=32))
    model.student = _Const()
    images = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    (masks, scores), = model.predict_masks(images, [(40, 40)], [torch.tensor([[10.0, 10, 20, 20], [30, 30, 40, 40]])])
    assert masks.shape == (2, 40, 40) and masks.dtype == torch.bool
    # the test-time crop of box 1 is (8.5, 8.5, 21.5, 21.5): pixels 9..20 read inside it (8 and 21 read its edge,
    # half a cell of zero padding: 0.37 < 0.5)
    want = torch.zeros(40, 40, dtype=torch.bool)
    want[9:21, 9:21] = True
    assert torch.equal(masks[0], want)
    # box 2's crop (28.5 .. 41.5) is cut at the image border
    assert masks[1, 29:, 29:].all() and masks[1].sum() == 11 * 11
    assert torch.allclose(scores, torch.sigmoid(torch.tensor(1.0)).expand(2), atol=1e-5)  # mean prob in the mask


# --------------------------------------------------------------------------- crop vs whole image (model.input)


def _crop_losses(**kw):
    torch.manual_seed(0)
    model = MAL(tiny_cfg(**kw))
    model.train()
    batch = _batch([[8, 8, 40, 40], [2, 3, 20, 30], [30, 10, 46, 20]])
    torch.manual_seed(1)
    return {k: float(v.detach()) for k, v in model(batch).items() if k.startswith("loss")}


def test_crop_path_is_unchanged_by_the_input_switch():
    # values of the crop path computed before `model.input` existed (same seeds, same tiny model and batch)
    default = _crop_losses()
    assert default == pytest.approx({"loss_mil": 0.8086857199668884, "loss_crf": 0.28004834055900574}, abs=1e-6)
    assert _crop_losses(input="crop", image_size=64) == default  # the image-only key changes nothing


def _slow_roi(feat, box, side, scale):
    """RoIAlign of one box (canvas pixels) on C x H x W ``feat``, loop by loop: aligned corners (-0.5),
    ceil(roi / side) samples per bin and axis, bilinear with the usual border rules."""
    import math

    c, h, w = feat.shape

    def bilinear(y, x):
        if y < -1 or y > h or x < -1 or x > w:
            return torch.zeros(c)
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        y, x = (float(y0) if y0 == h - 1 else y), (float(x0) if x0 == w - 1 else x)
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * feat[:, y0, x0] + (1 - ly) * lx * feat[:, y0, x1]
                + ly * (1 - lx) * feat[:, y1, x0] + ly * lx * feat[:, y1, x1])

    x0, y0, x1, y1 = (v * scale - 0.5 for v in box)
    bh, bw = (y1 - y0) / side, (x1 - x0) / side
    gy, gx = math.ceil((y1 - y0) / side), math.ceil((x1 - x0) / side)
    out = torch.zeros(c, side, side)
    for i in range(side):
        for j in range(side):
            acc = sum(bilinear(y0 + i * bh + (a + 0.5) * bh / gy, x0 + j * bw + (b + 0.5) * bw / gx)
                      for a in range(gy) for b in range(gx))
            out[:, i, j] = acc / (gy * gx)
    return out


def test_whole_image_roi_features_match_a_slow_per_box_reference():
    net = MaskNet(tiny_cfg(input="image", image_size=64, crop_size=64))  # canvas 64 -> 4 x 4 map, stride 16
    feats = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    boxes = [(0, 10.0, 6, 30, 22), (1, -12.0, -6, 40, 70), (1, 0.0, 0, 64, 64), (0, 50.0, 50, 53, 51)]
    rois = torch.tensor(boxes)
    for side in (net.side(None), net.side(0), net.side(2)):  # 4 (= 64 / 16), 4 (small), 16 (large)
        got = net.roi_features(feats, rois, side)
        for k, (i, *box) in enumerate(boxes):
            assert torch.allclose(got[k], _slow_roi(feats[int(i)], box, side, 1 / 16), atol=1e-5), (side, k)
    # decode_rois pools each RoI at its size class's grid (App. A.2), then the crop path's decoder
    sizes = torch.tensor([0, 2, 2, 1])
    big = torch.randn(2, 384, 4, 4, generator=torch.Generator().manual_seed(1))
    out = net.decode_rois(big, rois, sizes)
    assert out.shape == (4, 64, 64)
    for k in range(4):  # RoI by RoI at its own grid: 4, 16, 16, 8
        want = net._logits(net.roi_features(big, rois[k: k + 1], net.side(int(sizes[k]))))
        assert torch.allclose(out[k], want[0], atol=1e-5)


def test_image_rois_scale_the_expanded_boxes_into_the_canvases_that_hold_a_box():
    model = MAL(tiny_cfg(input="image", image_size=64))
    images = torch.zeros(3, 3, 40, 60, dtype=torch.uint8)
    images[1, :, :40, :60] = 200
    sizes = [(30, 30), (40, 60), (32, 16)]
    boxes = [torch.zeros(0, 4), torch.tensor([[6.0, 3, 30, 21]]), torch.tensor([[0.0, 0, 16, 32], [2, 2, 4, 4]])]
    crop_boxes = torch.tensor([[0.0, 0, 60, 40], [0, 0, 16, 32], [2, 2, 4, 4]])
    canvas, valid, rois = model.image_rois(images, sizes, boxes, crop_boxes)
    assert canvas.shape == (2, 3, 64, 64)  # image 0 holds no box: not encoded
    # image 1: 40 x 60 -> x 64 / 60, round(40 x 64 / 60) = 43 rows; image 2: 32 x 16 -> x 2
    assert valid[0].sum() == 43 * 64 and valid[1].sum() == 64 * 32
    assert torch.allclose(canvas[0, :, :43], torch.full((3, 43, 64), 200 / 255))
    sx, sy = 64 / 60, 43 / 40
    assert torch.allclose(rois, torch.tensor([[0, 0, 0, 60 * sx, 40 * sy], [1, 0, 0, 32, 64], [1, 4, 4, 8, 8]]))


class _ConstRoIs(nn.Module):
    """A whole-image student whose logits are 1 everywhere; records what it is given."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.encoder = lambda x: self.seen.append(("encoder", tuple(x.shape))) or x[:, :1, ::16, ::16]

    def decode_rois(self, feats, rois, sizes=None):
        self.seen.append(("rois", rois.clone()))
        return torch.ones(len(rois), 32, 32)


def test_whole_image_predict_encodes_once_and_pastes_like_the_crop_path():
    model = MAL(tiny_cfg(crop_size=32, input="image", image_size=80))
    model.student = _ConstRoIs()
    images = torch.zeros(1, 3, 40, 40, dtype=torch.uint8)
    (masks, scores), = model.predict_masks(images, [(40, 40)], [torch.tensor([[10.0, 10, 20, 20], [30, 30, 40, 40]])],
                                           chunk=1)
    assert [s[0] for s in model.student.seen] == ["encoder", "rois", "rois"]  # one encoder pass, RoIs in chunks
    assert model.student.seen[0][1] == (1, 3, 80, 80)
    # the test-time boxes (8.5, 8.5, 21.5, 21.5) and (28.5, ..., 41.5), x 2 into the 80 px canvas
    rois = torch.cat([s[1] for s in model.student.seen[1:]])
    assert torch.allclose(rois, torch.tensor([[0, 17.0, 17, 43, 43], [0, 57, 57, 83, 83]]))
    want = torch.zeros(40, 40, dtype=torch.bool)
    want[9:21, 9:21] = True  # as test_predict_pastes_the_crop_back_and_scores_the_mask
    assert torch.equal(masks[0], want) and masks[1, 29:, 29:].all() and masks[1].sum() == 11 * 11
    assert torch.allclose(scores, torch.sigmoid(torch.tensor(1.0)).expand(2), atol=1e-5)


class _Fixed(nn.Module):
    """A student / teacher giving the same logits on either path; records the images it encodes."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.images = nn.Parameter(logits), []

    def forward(self, crops, sizes=None):
        return self.logits

    def forward_rois(self, images, rois, sizes=None):
        self.images.append(images)
        return self.logits


def test_whole_image_losses_are_the_crop_losses_on_the_same_box_region():
    batch = _batch([[8, 8, 40, 40], [2, 3, 20, 30]])
    logits = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(0))
    got = {}
    for mode in ("crop", "image"):
        model = MAL(tiny_cfg(input=mode, image_size=64))
        model.student, model.teacher = _Fixed(logits), _Fixed(logits.flip(-1))
        torch.manual_seed(3)  # the same expansions (and augmentation draws)
        got[mode] = {k: float(v.detach()) for k, v in model(batch).items()}
        if mode == "image":
            s, t = model.student.images[0], model.teacher.images[0]
            assert s.shape == t.shape == (1, 3, 64, 64) and not torch.equal(s, t)  # augmented student only
    assert got["image"] == got["crop"] and got["crop"]["loss_mil"] > 0 and got["crop"]["loss_crf"] > 0


@pytest.mark.parametrize("decoder", ["fc", "attention"])
def test_whole_image_gradient_reaches_every_student_parameter(decoder):
    torch.manual_seed(0)
    model = MAL(tiny_cfg(input="image", image_size=64, decoder=decoder))
    model.train()
    losses = model(_batch([[8, 8, 40, 40], [2, 3, 20, 30], [30, 10, 46, 20]], image_size=64))
    assert losses["num_crops"] == 3
    (losses["loss_mil"] + losses["loss_crf"]).backward()
    for name, p in model.student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.encoder.pos_embed.shape[1] == 1 + 4 * 4  # the ViT is built for the 64 px canvas


def test_image_size_must_be_a_multiple_of_the_patch():
    from omniseg.engine.config import ConfigError

    with pytest.raises(ConfigError, match="model.image_size"):
        MaskNet(tiny_cfg(input="image", image_size=72))
    assert MaskNet(tiny_cfg(image_size=72)).grid == 2  # the crop path does not read image_size


@pytest.mark.parametrize("mode,kw", [("crop", {}), ("image", {}), ("crop", {"decoder": "fc"}),
                                     ("crop", {"encoder": "resnet18", "width": 8})])
def test_losses_under_bf16_autocast_are_fp32_and_match_fp32(mode, kw):
    # train.amp=bf16 on CPU: encoder and decoder run in bf16; the logits, the losses and the CRF stay fp32 (with size
    # classes a small and a medium box write into one buffer; the FC decoder has none) and close to the fp32 run's
    batch = _batch([[8, 8, 40, 40], [2, 3, 20, 30]], image_size=64)
    torch.manual_seed(0)
    model = MAL(tiny_cfg(input=mode, image_size=64, **kw))
    got = {}
    for amp in (False, True):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            got[amp] = {k: v.detach() for k, v in model(batch).items()}
    for k in ("loss_mil", "loss_crf"):
        assert got[True][k].dtype == torch.float32 and torch.isfinite(got[True][k])
        assert abs(float(got[True][k]) - float(got[False][k])) <= 0.05 * abs(float(got[False][k])) + 1e-3, k
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (masks, scores), = model.predict_masks(batch.images, batch.image_sizes, [batch.targets[0].boxes])
    assert masks.dtype == torch.bool and scores.dtype == torch.float32 and masks.shape == (2, 64, 64)
