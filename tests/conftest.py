"""Suite-wide test settings and shared fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Run every test on one intra-op torch thread.

    The CI machines have 2 cores shared by several jobs; with torch's default 2 threads the
    small convolutions in these tests run ~10x slower from contention (measured: 15 Hourglass-20 steps
    2.2 s with 2 threads vs 0.15 s with 1).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_box_to_mask(tmp_path_factory):
    """A box_to_mask run trained for 2 iterations (seconds): (run folder, resolved config). Tests
    read it; one that damages a checkpoint works on a copy."""
    from omniseg.engine.config import load_config
    from omniseg.recipes.box_to_mask import RECIPE, BoxToMaskExperiment
    from omniseg.recipes.contract import run_recipe

    out = tmp_path_factory.mktemp("tiny_box_to_mask")
    cfg = load_config(BoxToMaskExperiment, None, [
        "model.width=8", "model.fpn_channels=16", "model.norm=GN", "model.freeze_at=0",
        "model.head_convs=1", "model.head_dim=8", "data.train_num_images=4", "data.val_num_images=2",
        "data.image_size=96", "data.batch_size=2", "train.max_iter=2", "train.progress=false",
        f"train.output_dir={out}", "train.checkpoint_period=2",
    ])
    run_recipe(RECIPE, cfg)
    return out, cfg


@pytest.fixture
def threads_restored(monkeypatch):
    """No thread choice of another test carries over (omniseg.engine.threads); torch's count is put
    back afterwards."""
    import omniseg.engine.threads

    monkeypatch.setattr(omniseg.engine.threads, "_applied", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def image_file(tmp_path_factory):
    """A 96 x 96 synthetic image saved as PNG."""
    from PIL import Image

    from omniseg.data.synth.world import SynthConfig, generate_image

    image, _ = generate_image(SynthConfig(seed=5, num_images=1, image_size=96), 0)
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(image).save(path)
    return path
