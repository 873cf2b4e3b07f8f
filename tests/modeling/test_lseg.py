"""LSeg+ (openseg paper Sec. 4.3): label maps, shapes, per-pixel scores by hand, one-step overfit, prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omniseg.data.batch import Targets, collate
from omniseg.data.dataset import synth_dataset
from omniseg.data.synth.world import SynthConfig
from omniseg.modeling.contrastive_classifier import PhraseEmbedder
from omniseg.modeling.lseg import IGNORE, LSegConfig, build_lseg, label_map
from omniseg.text.encoders import HashEncoder

TINY = dict(backbone="resnet18_fpn", width=8, fpn_channels=16, norm="GN", freeze_at=0, embed_dim=16,
            head_channels=16, gn_groups=4)


def tiny_model(names=("red circle", "grass", "sky")):
    torch.manual_seed(0)
    model = build_lseg(LSegConfig(**TINY), list(names))
    model.set_text_embedder(PhraseEmbedder(HashEncoder(16).encode, 16))
    return model


def test_label_map_paints_stuff_then_things_and_ignores_crowd():
    masks = torch.zeros(4, 3, 5, dtype=torch.uint8)
    masks[0, :, :3] = 1  # thing "a"
    masks[1, :, :4] = 1  # stuff "s", listed after the thing: painted first anyway; column 4: no mask
    masks[2, 0, 0] = 1  # crowd thing
    masks[3, 2, 3] = 1  # no mask (has_mask False): not painted
    t = Targets(boxes=torch.zeros(4, 4), masks=masks, has_box=torch.zeros(4, dtype=torch.bool),
                box_exact=torch.zeros(4, dtype=torch.bool), has_mask=torch.tensor([True, True, True, False]),
                is_crowd=torch.tensor([False, False, True, False]), is_thing=torch.tensor([True, False, True, True]),
                category_ids=torch.full((4,), -1), texts=["a", "s", "a", "s"])
    got = label_map(t, {"a": 0, "s": 1}, (3, 5))
    want = torch.tensor([[IGNORE, 0, 0, 1, IGNORE], [0, 0, 0, 1, IGNORE], [0, 0, 0, 1, IGNORE]])
    assert torch.equal(got, want)


def test_shapes_and_scores_by_hand():
    model = tiny_model().eval()
    enc = model.encode(torch.zeros(2, 3, 64, 96, dtype=torch.uint8), [(64, 96), (30, 40)])
    assert enc["pixels"].shape == (2, 16, 16, 24) and enc["valid"][1].sum() == 8 * 10
    w = torch.randn(3, 16)
    y = model.query_scores(enc, 1, w)
    assert y.shape == (3, 16, 24)
    assert torch.allclose(y[2, 5, 7], F.cosine_similarity(w[2], enc["pixels"][1, :, 5, 7], dim=0), atol=1e-6)


def test_one_step_overfit_and_predict():
    ds = synth_dataset(SynthConfig(seed=3, num_images=2, image_size=64), include_stuff=True)
    batch = collate([ds[0], ds[1]])
    model = tiny_model([c.name for c in ds.rs.categories])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        out = model(batch)
        first = first or float(out["loss_pixel"].detach())
        opt.zero_grad()
        out["loss_pixel"].backward()
        opt.step()
    assert float(out["loss_pixel"].detach()) < 0.5 * first
    model.eval()
    res = model.predict(batch.images, ["red circle|crimson disk", "grass"], batch.image_sizes, [(32, 32), (64, 64)])
    assert [tuple(sem.shape) for sem, _ in res] == [(2, 32, 32), (2, 64, 64)]
    assert all(len(inst) == 0 for _, inst in res)


def test_loss_under_bf16_autocast_is_fp32_and_matches_fp32(assert_bf16_close):
    ds = synth_dataset(SynthConfig(seed=3, num_images=2, image_size=64), include_stuff=True)
    assert_bf16_close(tiny_model(), collate([ds[0], ds[1]]))
