"""MAL's RoI inputs: box expansion (paper Sec. 3.3), crop geometry, box / valid masks, augmentations."""

import pytest
import torch

from omniseg.data.box_crops import (
    box_masks_in_crops,
    crop_and_resize,
    expand_boxes,
    fixed_expansion,
    sample_expansion,
    size_classes,
    student_augment,
    whole_images,
)
from omniseg.ops.masks import paste_masks_in_image


def test_expand_boxes_matches_the_hand_worked_formula():
    # b = (10, 20, 30, 60): center (20, 40), half-extents 10 (x) and 20 (y)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    betas = torch.tensor([[0.5, 0.25, 0.1, 0.3]])  # β_x (left), β'_x (right), β_y (top), β'_y (bottom)
    got = expand_boxes(boxes, betas)
    # x0' = 20 - 1.5 * 10, y0' = 40 - 1.1 * 20, x1' = 20 + 1.25 * 10, y1' = 40 + 1.3 * 20
    assert torch.allclose(got, torch.tensor([[5.0, 18.0, 32.5, 66.0]]))


def test_sample_expansion_follows_the_paper_draws():
    theta = 1.2
    betas = sample_expansion(3, theta, generator=torch.Generator().manual_seed(7))
    u = torch.rand(3, 4, generator=torch.Generator().manual_seed(7))  # the same draws, by hand
    theta_x, theta_y = u[:, 0] * theta, u[:, 1] * theta
    want = torch.stack([u[:, 2] * theta_x, theta_x - u[:, 2] * theta_x, u[:, 3] * theta_y, theta_y - u[:, 3] * theta_y], 1)
    assert torch.allclose(betas, want)
    many = sample_expansion(2000, theta, generator=torch.Generator().manual_seed(0))
    assert (many >= 0).all()
    assert ((many[:, 0] + many[:, 1]) <= theta + 1e-6).all() and ((many[:, 2] + many[:, 3]) <= theta + 1e-6).all()
    assert (many[:, 0] + many[:, 1]).max() > 0.9 * theta  # θ_x ~ U[0, θ] reaches near θ


def test_theta_zero_is_no_expansion_and_expansion_always_contains_the_box():
    g = torch.Generator().manual_seed(1)
    boxes = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    assert torch.equal(expand_boxes(boxes, sample_expansion(50, 0.0, generator=g)), boxes)
    big = expand_boxes(boxes, sample_expansion(50, 1.6, generator=g))
    assert (big[:, :2] <= boxes[:, :2]).all() and (big[:, 2:] >= boxes[:, 2:]).all()
    # the test-time margin: every half-extent x (1 + θ / 2)
    assert torch.allclose(expand_boxes(torch.tensor([[10.0, 10, 20, 20]]), fixed_expansion(1, 0.6)),
                          torch.tensor([[8.5, 8.5, 21.5, 21.5]]))


def test_crop_reads_pixel_centres_and_marks_padding_invalid():
    ramp = torch.arange(8.0).repeat(8, 1)  # value = x column index
    images = torch.stack([ramp, ramp.T, ramp * 0]).unsqueeze(0)  # 1 x 3 x 8 x 8
    crops, valid = crop_and_resize(images, torch.tensor([0]), torch.tensor([[2.0, 4.0, 10.0, 12.0]]), (4, 4), [(8, 8)])
    # crop column j reads x = 2 + 2 (j + 0.5) = 3, 5, 7, 9; pixel i's centre is i + 0.5 -> value x - 0.5
    assert torch.allclose(crops[0, 0, 0, :3], torch.tensor([2.5, 4.5, 6.5]))
    assert torch.allclose(crops[0, 1, :2, 0], torch.tensor([4.5, 6.5]))  # y = 5, 7
    assert valid[0].tolist() == [[True, True, True, False]] * 2 + [[False] * 4] * 2  # x = 9 > 8, y = 9, 11 > 8
    # the padded batch: the valid (H, W) = (6, 8), not the tensor's size, decides (x = -3, -1 and y = 7 are out)
    _, valid2 = crop_and_resize(images, torch.tensor([0]), torch.tensor([[-4.0, 0.0, 4.0, 8.0]]), (4, 4), [(6, 8)])
    assert valid2[0, 0].tolist() == [False, False, True, True] and valid2[0, :, 2].tolist() == [True] * 3 + [False]


def test_box_mask_in_crop_coordinates():
    crop = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    m = box_masks_in_crops(torch.tensor([[4.0, 6.0, 8.0, 12.0]]), crop, (8, 8))
    # crop pixel j's centre is at 2 j + 1: x in [4, 8] -> j = 2, 3; y in [6, 12] -> j = 3, 4, 5
    want = torch.zeros(8, 8)
    want[3:6, 2:4] = 1
    assert torch.equal(m[0], want)
    tiny = box_masks_in_crops(torch.tensor([[5.0, 5.0, 5.2, 5.2]]), crop, (8, 8))  # thinner than a crop pixel
    assert tiny[0].sum() == 1 and tiny[0, 2, 2] == 1


def test_crop_then_paste_returns_the_mask():
    mask = torch.zeros(1, 1, 40, 40)
    mask[0, 0, 12:28, 8:30] = 1
    crop_box = expand_boxes(torch.tensor([[8.0, 12.0, 30.0, 28.0]]), fixed_expansion(1, 0.6))
    crops, _ = crop_and_resize(mask, torch.tensor([0]), crop_box, (64, 64), [(40, 40)])
    back = paste_masks_in_image(crops[:, 0], crop_box, (40, 40), threshold=0.5)
    assert torch.equal(back[0], mask[0, 0].bool())


def test_whole_images_resize_the_longer_side_and_pad_to_a_square():
    # image 0: 4 x 8 inside a padded 6 x 10 batch (padding 99 must not leak); image 1: 5 x 7
    images = torch.full((2, 1, 6, 10), 99.0)
    images[0, 0, :4, :8] = torch.arange(8.0) * 4 + 2  # value 4 u at pixel centre u = x + 0.5
    images[1, 0, :5, :7] = 3.0
    canvas, valid, scales = whole_images(images, [(4, 8), (5, 7)], 16)
    assert canvas.shape == (2, 1, 16, 16) and valid.shape == (2, 16, 16)
    # image 0: x 2 -> 16 x 8 valid; canvas pixel j reads u = (j + 0.5) / 2, value 2 j + 1 (edges clamp to 2 / 30)
    assert valid[0, :8, :16].all() and valid[0].sum() == 8 * 16 and scales[0].tolist() == [2.0, 2.0]
    assert torch.allclose(canvas[0, 0, 3, 1:15], torch.arange(1.0, 15) * 2 + 1)
    assert canvas[0, 0, 3, 0] == 2 and canvas[0, 0, 3, 15] == 30 and (canvas[0, :, 8:] == 0).all()
    # image 1: x 16 / 7 -> round(5 x 16 / 7) = 11 rows, 16 columns; a constant stays constant
    assert valid[1].sum() == 11 * 16 and valid[1, :11, :16].all()
    assert torch.allclose(scales[1], torch.tensor([16 / 7, 11 / 5]))
    assert torch.allclose(canvas[1, 0, :11], torch.full((11, 16), 3.0)) and (canvas[1, :, 11:] == 0).all()
    # shrinking: a 32 x 16 image to 8 -> 8 x 4, x 1/4 both ways
    _, v, sc = whole_images(torch.rand(1, 3, 32, 16), [(32, 16)], 8)
    assert v[0].sum() == 8 * 4 and v[0, :, :4].all() and sc[0].tolist() == [0.25, 0.25]


def test_size_classes_use_the_appendix_limits():
    boxes = torch.tensor([[0, 0, 31.0, 31], [0, 0, 32, 32], [0, 0, 95, 96], [0, 0, 96, 96], [0, 0, 300, 10]])
    assert size_classes(boxes).tolist() == [0, 1, 1, 2, 1]


def test_student_augment():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    assert torch.equal(student_augment(x, p_jitter=0, p_gray=0, p_blur=0), x)
    gray = student_augment(x, p_jitter=0, p_gray=1, p_blur=0)
    assert torch.allclose(gray[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.equal(gray[:, 0], gray[:, 2])
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(student_augment(flat, p_jitter=0, p_gray=0, p_blur=1), flat)  # blur keeps a constant
    blurred = student_augment(x, p_jitter=0, p_gray=0, p_blur=1, blur_sigma=(20.0, 20.0))
    assert blurred.std() < 0.5 * x.std()
    out = student_augment(x, generator=g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)


@pytest.mark.parametrize("n", [0, 1])
def test_student_augment_small_batches(n):
    assert student_augment(torch.rand(n, 3, 8, 8)).shape == (n, 3, 8, 8)
