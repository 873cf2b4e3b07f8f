"""ALIGN-style image-level baseline (openseg paper Sec. 4.3): pooling and the contrastive loss against a slow
reference, per-pixel inference semantics and shapes, one-step overfit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from omniseg.modeling.align_baseline import ALIGNConfig, build_align, pooled_embedding
from omniseg.modeling.contrastive_classifier import PhraseEmbedder
from omniseg.text.encoders import HashEncoder

TINY = dict(backbone="resnet18_fpn", width=8, fpn_channels=16, norm="GN", freeze_at=0, embed_dim=16,
            head_channels=16, gn_groups=4)
SIZES = [(64, 64), (40, 52), (64, 36)]


def tiny_model():
    torch.manual_seed(0)
    model = build_align(ALIGNConfig(**TINY))
    model.set_text_embedder(PhraseEmbedder(HashEncoder(16).encode, 16))
    return model


def images():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(3, 3, 64, 64, dtype=torch.uint8)
    for i, (h, w) in enumerate(SIZES):
        x[i, :, :h, :w] = torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)
    return x


def test_pooled_embedding_is_the_mean_over_valid_pixels():
    torch.manual_seed(0)
    pixels, valid = torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.bool)
    valid[0] = True
    valid[1, :2, :3] = True
    pixels[1, :, 3] = float("nan")  # padding: never read
    got = pooled_embedding(pixels, valid)
    ref = [sum(pixels[b, :, i, j] for i in range(4) for j in range(5) if valid[b, i, j]) / int(valid[b].sum())
           for b in range(2)]
    assert torch.allclose(got, torch.stack(ref), atol=1e-5)


def test_contrastive_loss_matches_a_slow_reference():
    model = tiny_model()
    captions = [["a red circle on grass"], ["blue sky above sand"], []]  # image 2: no caption, out of the loss
    out = model(SimpleNamespace(images=images(), image_sizes=SIZES, captions=captions))
    assert set(out) == {"loss_contrastive", "tau"}
    with torch.no_grad():
        enc = model.encode(images(), SIZES)
        z = [enc["pixels"][b][:, enc["valid"][b]].mean(1) for b in range(2)]  # ALIGN: average pooling
        t = model.embed(["a red circle on grass", "blue sky above sand"])
        tau = math.exp(float(model.log_temperature))
        s = [[float(F.cosine_similarity(z[i], t[j], dim=0)) / tau for j in range(2)] for i in range(2)]
        rows = [s[i][i] - math.log(sum(math.exp(v) for v in s[i])) for i in range(2)]  # image -> captions
        cols = [s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(2))) for j in range(2)]  # caption -> images
    ref = -(sum(rows) + sum(cols)) / 4
    assert math.isclose(float(out["loss_contrastive"].detach()), ref, rel_tol=1e-4)


def test_per_pixel_inference_is_the_dense_map_against_the_text():
    model = tiny_model().eval()
    grass, lawn, sky = model.embed(["grass", "lawn", "sky"])
    pixels = torch.zeros(1, 16, 4, 6)
    pixels[0, :, :, :2] = grass[:, None, None]
    pixels[0, :, :, 2:4] = lawn[:, None, None] * 3  # scale does not matter: cosine
    pixels[0, :, :, 4:] = sky[:, None, None]
    model.encode = lambda imgs, sizes: {"pixels": pixels, "valid": torch.ones(1, 4, 6, dtype=torch.bool)}
    (sem, inst), = model.predict(torch.zeros(1, 3, 16, 24, dtype=torch.uint8), ["sky", "grass|lawn"], [(16, 24)],
                                 [(8, 12)])
    assert sem.shape == (2, 8, 12) and len(inst) == 0
    labels = sem.argmax(0)
    assert (labels[:, :3] == 1).all() and (labels[:, 5:7] == 1).all() and (labels[:, 9:] == 0).all()
    assert torch.allclose(sem[1, :, :3], torch.ones(8, 3), atol=1e-5)  # cosine 1 with its own word
    real = tiny_model().eval().predict(images(), ["sky", "grass"], SIZES, SIZES)
    assert [tuple(s.shape) for s, _ in real] == [(2, *hw) for hw in SIZES]


def test_one_step_overfit():
    model = tiny_model()
    batch = SimpleNamespace(images=images(), image_sizes=SIZES, captions=[["red circle"], ["blue sky"], ["grass"]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model(batch)["loss_contrastive"].detach())
    for _ in range(6):
        loss = model(batch)["loss_contrastive"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_loss_under_bf16_autocast_is_fp32_and_matches_fp32(assert_bf16_close):
    captions = [["a red circle on grass"], ["blue sky above sand"], []]
    assert_bf16_close(tiny_model(), SimpleNamespace(images=images(), image_sizes=SIZES, captions=captions))
