"""Prompt templates and prompt-ensembled embeddings."""

from __future__ import annotations

import pytest
import torch

from omniseg.text.encoders import HashEncoder
from omniseg.text.prompts import NAME_ONLY, TEMPLATES, encode_with_prompts, fill_template, indefinite_article


class TableEncoder:
    """Returns hand-set (unnormalized) vectors, so averages can be worked by hand."""

    name = "table"
    dim = 2

    def __init__(self, table: dict[str, list[float]]):
        self.table, self.calls = table, []

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float32).reshape(len(texts), self.dim)


def test_fill_template():
    assert fill_template("a photo of {a} {}.", "apple") == "a photo of an apple."
    assert fill_template("a photo of {a} {}.", "red ring") == "a photo of a red ring."
    assert (
        fill_template("there is the {} in the scene.", "Orange star")
        == "there is the Orange star in the scene."
    )
    assert indefinite_article("") == "a" and indefinite_article("Umbrella") == "an"
    for t in TEMPLATES:  # every template names the object exactly once
        filled = fill_template(t, "QQQ")
        assert filled.count("QQQ") == 1 and "{" not in filled
    assert len(set(TEMPLATES)) == len(TEMPLATES)


def test_hand_worked_average():
    # "cat": templates give (3, 4) -> (0.6, 0.8) and (0, 2) -> (0, 1); mean (0.3, 0.9) -> /sqrt(0.9)
    enc = TableEncoder({"cat": [3.0, 4.0], "a cat.": [0.0, 2.0], "dog": [1.0, 0.0], "a dog.": [-1.0, 0.0]})
    out = encode_with_prompts(enc, ["cat"], ["{}", "a {}."])
    n = (0.3**2 + 0.9**2) ** 0.5
    assert torch.allclose(out, torch.tensor([[0.3 / n, 0.9 / n]]))
    assert enc.calls == [["cat", "a cat."]]  # one batched call, name-major order
    # opposite template vectors average to zero: stays finite (zero row), no NaN
    z = encode_with_prompts(enc, ["dog"], ["{}", "a {}."])
    assert torch.equal(z, torch.zeros(1, 2))


def test_reference_loop_and_edges():
    enc = HashEncoder(dim=16, seed=0)
    names = ["red ring", "apple", "blue hoop"]
    out = encode_with_prompts(enc, names)
    assert out.shape == (3, 16) and torch.allclose(out.norm(dim=1), torch.ones(3))
    for i, name in enumerate(names):  # slow reference: one name, one template at a time
        acc = torch.zeros(16)
        for t in TEMPLATES:
            v = enc.encode([fill_template(t, name)])[0]
            acc += v / v.norm()
        assert torch.allclose(out[i], acc / acc.norm(), atol=1e-6)
    # a single "{}" template is the plain embedding
    assert torch.allclose(encode_with_prompts(enc, names, NAME_ONLY), enc.encode(names))
    assert encode_with_prompts(enc, []).shape == (0, 16)
    with pytest.raises(ValueError):
        encode_with_prompts(enc, names, [])
