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
