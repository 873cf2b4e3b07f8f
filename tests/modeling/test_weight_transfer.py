import math

import pytest
import torch

from omniseg.modeling.weight_transfer import (
    TRANSFER_INPUTS,
    WeightTransfer,
    WeightTransferConfig,
    standardize_rows,
)

C, F_DET, D = 5, 6, 4


def _weights(seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(C, F_DET, generator=g).requires_grad_(requires_grad)
    box = torch.randn(C, 4, F_DET, generator=g).mul(0.1).requires_grad_(requires_grad)
    return cls, box


def _reference(t: WeightTransfer, cls, box):
    """Class by class, layer by layer, with explicit loops."""
    out = []
    for c in range(C):
        parts = []
        if t.cfg.input in ("text", "randn"):
            parts.append(t.fixed_embeddings[c].tolist())
        if t.cfg.input in ("cls", "cls+box"):
            parts.append(cls[c].tolist())
        if t.cfg.input in ("box", "cls+box"):
            parts.append([v for k in range(4) for v in box[c, k].tolist()])
        x = []
        for p in parts:
            if t.cfg.input_norm == "standardize":
                mu = sum(p) / len(p)
                var = sum((v - mu) ** 2 for v in p) / len(p)
                p = [(v - mu) / math.sqrt(var + 1e-12) for v in p]
            x += p
        for i, fc in enumerate(t.fcs):
            w, b = fc.weight.tolist(), fc.bias.tolist()
            x = [sum(w[o][j] * x[j] for j in range(len(x))) + b[o] for o in range(len(w))]
            if i < len(t.fcs) - 1:
                slope = t.cfg.leaky_slope if t.cfg.activation == "leaky_relu" else 0.0
                x = [v if v > 0 else slope * v for v in x]
        out.append(x)
    return torch.tensor(out)


def _randomize(t: WeightTransfer, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("kind", TRANSFER_INPUTS)
@pytest.mark.parametrize("layers,act", [(1, "relu"), (2, "relu"), (2, "leaky_relu"), (3, "leaky_relu")])
def test_every_input_and_depth_matches_reference(kind, layers, act):
    text = torch.randn(C, 3, generator=torch.Generator().manual_seed(5)) if kind == "text" else None
    cfg = WeightTransferConfig(input=kind, num_layers=layers, hidden_dim=7, activation=act, leaky_slope=0.2,
                               randn_dim=9)
    t = WeightTransfer(cfg, out_dim=D, det_dim=F_DET, num_classes=C, text_embeddings=text)
    assert len(t.fcs) == layers
    assert t.in_dim == {"cls": F_DET, "box": 4 * F_DET, "cls+box": 5 * F_DET, "text": 3, "randn": 9}[kind]
    _randomize(t)
    cls, box = _weights()
    out = t(cls, box)
    assert out.shape == (C, D)
    torch.testing.assert_close(out, _reference(t, cls, box), atol=1e-4, rtol=1e-4)


def test_raw_inputs_without_normalization():
    cfg = WeightTransferConfig(input="cls+box", num_layers=1, input_norm="none")
    t = WeightTransfer(cfg, out_dim=D, det_dim=F_DET, num_classes=C)
    _randomize(t)
    cls, box = _weights()
    torch.testing.assert_close(t(cls, box), _reference(t, cls, box), atol=1e-4, rtol=1e-4)
    # affine map: concatenated raw weights times W^T plus b
    x = torch.cat([cls, box.reshape(C, -1)], 1)
    torch.testing.assert_close(t(cls, box), x @ t.fcs[0].weight.T + t.fcs[0].bias)


def test_standardize_rows_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(standardize_rows(x), torch.tensor([[-1 / s, 0.0, 1 / s], [0.0, 0.0, 0.0]]))


def test_standardize_balances_parts_of_different_scale():
    t = WeightTransfer(WeightTransferConfig(input="cls+box"), out_dim=D, det_dim=F_DET, num_classes=C)
    cls, box = _weights()
    x = t.embeddings(cls * 100, box * 0.001)
    # both parts have unit variance per class after standardization, whatever their raw scale
    torch.testing.assert_close(x[:, :F_DET].var(1, unbiased=False), torch.ones(C), atol=1e-3, rtol=0)
    torch.testing.assert_close(x[:, F_DET:].var(1, unbiased=False), torch.ones(C), atol=1e-3, rtol=0)


def test_initial_output_is_small_and_last_layer_zero_bias():
    t = WeightTransfer(WeightTransferConfig(hidden_dim=16), out_dim=D, det_dim=F_DET, num_classes=C)
    assert torch.count_nonzero(t.fcs[-1].bias) == 0
    assert float(t.fcs[-1].weight.detach().std()) < 0.01
    out = t(*_weights()).detach()
    assert float(out.abs().max()) < 0.1


@pytest.mark.parametrize("stop_grad", [True, False])
def test_stop_grad_blocks_gradient_into_detection_weights(stop_grad):
    t = WeightTransfer(WeightTransferConfig(stop_grad=stop_grad, hidden_dim=8), out_dim=D, det_dim=F_DET,
                       num_classes=C)
    _randomize(t)
    cls, box = _weights(requires_grad=True)
    t(cls, box).square().sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in t.parameters())
    if stop_grad:
        assert cls.grad is None and box.grad is None
    else:
        assert float(cls.grad.abs().sum()) > 0 and float(box.grad.abs().sum()) > 0


def test_fixed_controls_are_buffers_and_ignore_detector_weights():
    a = WeightTransfer(WeightTransferConfig(input="randn", randn_dim=8, randn_seed=3), out_dim=D, det_dim=F_DET,
                       num_classes=C)
    b = WeightTransfer(WeightTransferConfig(input="randn", randn_dim=8, randn_seed=3), out_dim=D, det_dim=F_DET,
                       num_classes=C)
    torch.testing.assert_close(a.fixed_embeddings, b.fixed_embeddings)  # seeded, not global RNG
    assert "fixed_embeddings" in a.state_dict() and not a.fixed_embeddings.requires_grad
    assert not a.uses_detector_weights
    cls, box = _weights()
    torch.testing.assert_close(a(), a(cls, box))
    text = torch.arange(C * 2, dtype=torch.float32).view(C, 2)
    t = WeightTransfer(WeightTransferConfig(input="text", input_norm="none", num_layers=1), out_dim=D,
                       det_dim=F_DET, num_classes=C, text_embeddings=text)
    torch.testing.assert_close(t.embeddings(), text)
    text[0, 0] = 99.0  # a private copy
    assert float(t.fixed_embeddings[0, 0]) == 0.0


def test_validation_errors():
    with pytest.raises(ValueError, match="transfer input"):
        WeightTransfer(WeightTransferConfig(input="glove"), out_dim=D, det_dim=F_DET, num_classes=C)
    with pytest.raises(ValueError, match="num_layers"):
        WeightTransfer(WeightTransferConfig(num_layers=4), out_dim=D, det_dim=F_DET, num_classes=C)
    with pytest.raises(ValueError, match="activation"):
        WeightTransfer(WeightTransferConfig(activation="gelu"), out_dim=D, det_dim=F_DET, num_classes=C)
    with pytest.raises(ValueError, match="input_norm"):
        WeightTransfer(WeightTransferConfig(input_norm="l2"), out_dim=D, det_dim=F_DET, num_classes=C)
    with pytest.raises(ValueError, match="text embeddings"):
        WeightTransfer(WeightTransferConfig(input="text"), out_dim=D, det_dim=F_DET, num_classes=C)
    with pytest.raises(ValueError, match="text embeddings"):
        WeightTransfer(WeightTransferConfig(input="text"), out_dim=D, det_dim=F_DET, num_classes=C,
                       text_embeddings=torch.zeros(C + 1, 3))
    t = WeightTransfer(WeightTransferConfig(input="cls+box"), out_dim=D, det_dim=F_DET, num_classes=C)
    cls, box = _weights()
    with pytest.raises(ValueError, match="regression weights"):
        t(cls, None)
    with pytest.raises(ValueError, match="classification weights"):
        t(None, box)
    with pytest.raises(ValueError, match="expected"):
        t(cls[:3], box[:3])
