"""On-disk text-embedding cache: hits skip the encoder, values are bit-identical, files are shared."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from omniseg.text.cache import CachedEncoder, encoder_folder, text_key
from omniseg.text.encoders import HashEncoder


class CountingEncoder:
    """HashEncoder that records every text it is asked to encode."""

    def __init__(self, dim: int = 8, name: str | None = None):
        self.inner = HashEncoder(dim=dim, seed=5)
        self.name = name or self.inner.name
        self.dim = dim
        self.seen: list[str] = []

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.seen.extend(texts)
        return self.inner.encode(texts)


def test_hits_skip_the_encoder(tmp_path):
    inner = CountingEncoder()
    enc = CachedEncoder(inner, tmp_path)
    assert (enc.name, enc.dim) == (inner.name, 8)
    first = enc.encode(["red ring", "blue hoop", "red ring"])
    assert inner.seen == ["red ring", "blue hoop"]  # duplicate within a call computed once
    assert torch.equal(first, inner.inner.encode(["red ring", "blue hoop", "red ring"]))
    again = enc.encode(["blue hoop", "red ring"])
    assert inner.seen == ["red ring", "blue hoop"]  # all hits: no call
    assert torch.equal(again, first[[1, 0]])
    enc.encode(["red ring", "green star"])
    assert inner.seen == ["red ring", "blue hoop", "green star"]  # only the miss
    assert (enc.hits, enc.misses) == (4, 3) and len(enc) == 3
    assert enc.encode([]).shape == (0, 8)
    with pytest.raises(TypeError):
        enc.encode("red ring")


def test_exact_text_keys(tmp_path):
    inner = CountingEncoder()
    enc = CachedEncoder(inner, tmp_path)
    enc.encode(["Red ring", "red ring", "red ring ", ""])
    assert inner.seen == ["Red ring", "red ring", "red ring ", ""]
    assert len({text_key("e", t) for t in ["Red ring", "red ring", "red ring "]}) == 3
    assert text_key("a", "b\0c") != text_key("a\0b", "c")


def test_new_object_reads_the_same_dir(tmp_path):
    inner = CountingEncoder()
    values = CachedEncoder(inner, tmp_path).encode(["red ring", "blue hoop"])
    fresh_inner = CountingEncoder()
    fresh = CachedEncoder(fresh_inner, tmp_path)
    assert torch.equal(fresh.encode(["blue hoop", "red ring"]), values[[1, 0]])
    assert fresh_inner.seen == []
    # a different encoder name never sees these rows
    other_inner = CountingEncoder(name="other")
    CachedEncoder(other_inner, tmp_path).encode(["red ring"])
    assert other_inner.seen == ["red ring"]
    folder = tmp_path / encoder_folder(inner.name)
    assert json.loads((folder / "encoder.json").read_text())["dim"] == 8
    shard = next(folder.glob("*.safetensors"))
    with safe_open(str(shard), framework="pt") as f:
        keys = json.loads(f.metadata()["keys"])
        assert keys == [text_key(inner.name, "red ring"), text_key(inner.name, "blue hoop")]
        assert torch.equal(f.get_tensor("embeddings"), values)


def test_other_process_writes_are_picked_up(tmp_path):
    """Two live cache objects on one folder (as two processes): one's misses become the other's hits."""
    a_inner, b_inner = CountingEncoder(), CountingEncoder()
    a, b = CachedEncoder(a_inner, tmp_path), CachedEncoder(b_inner, tmp_path)
    a.encode(["red ring"])
    assert torch.equal(b.encode(["red ring"]), a.encode(["red ring"]))
    assert b_inner.seen == []
    code = (
        "import sys; from omniseg.text.cache import CachedEncoder; from omniseg.text.encoders import HashEncoder;"
        "e = CachedEncoder(HashEncoder(dim=8, seed=5), sys.argv[1]); e.encode(['from child']);"
        "print(e.misses)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
    assert torch.equal(a.encode(["from child"]), HashEncoder(dim=8, seed=5).encode(["from child"]))
    assert a_inner.seen == ["red ring"]


def test_compact_and_damaged_shards(tmp_path):
    inner = CountingEncoder()
    enc = CachedEncoder(inner, tmp_path)
    texts = [f"phrase {i}" for i in range(5)]
    for t in texts:
        enc.encode([t])
    folder = tmp_path / encoder_folder(inner.name)
    assert len(list(folder.glob("*.safetensors"))) == 5
    before = enc.encode(texts)
    merged = enc.compact()
    assert list(folder.glob("*.safetensors")) == [merged]
    fresh_inner = CountingEncoder()
    assert torch.equal(CachedEncoder(fresh_inner, tmp_path).encode(texts), before)
    assert fresh_inner.seen == []
    assert enc.compact() is None  # one shard: nothing to do
    # a damaged shard is ignored with a warning and costs a recompute, never a wrong value
    merged.write_bytes(b"garbage")
    again_inner = CountingEncoder()
    with pytest.warns(UserWarning, match="unreadable"):
        again = CachedEncoder(again_inner, tmp_path)
    assert torch.equal(again.encode(texts), before) and again_inner.seen == texts


def test_wrong_shape_from_encoder(tmp_path):
    class Bad(CountingEncoder):
        def encode(self, texts):
            return torch.zeros(len(texts), 3)

    with pytest.raises(ValueError, match="expected"):
        CachedEncoder(Bad(), tmp_path).encode(["a"])
