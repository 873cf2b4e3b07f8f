"""Text encoders: batched outputs against slow one-text-at-a-time references."""

from __future__ import annotations

import socket
import string
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from omniseg.text.encoders import (
    CLIPTextEncoder,
    HashEncoder,
    MiniLMEncoder,
    TextEncoder,
    build_text_encoder,
    mean_pool,
)

TEXTS = ["red ring", "a photo of a very small crimson disk in the scene.", "hoop", "blue square", "x"]


def _no_network(*args, **kwargs):
    raise AssertionError("text encoders must not touch the network")


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    with (
        mock.patch.object(socket.socket, "connect", _no_network),
        mock.patch.object(socket, "create_connection", _no_network),
    ):
        return MiniLMEncoder(batch_size=2)


def test_mean_pool_hand_values():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(mean_pool(hidden, torch.tensor([[0, 0, 0]])), torch.zeros(1, 2))


def test_minilm_matches_unbatched_reference(minilm):
    assert minilm.dim == 384 and minilm.name == "all-MiniLM-L6-v2"
    assert isinstance(minilm, TextEncoder)
    emb = minilm.encode(TEXTS)  # batch_size=2: length-sorted batches with padding
    assert emb.shape == (5, 384) and emb.dtype == torch.float32 and not emb.requires_grad
    with torch.no_grad():
        for i, text in enumerate(TEXTS):  # slow reference: one text, no padding, plain mean
            tok = minilm.tokenizer([text], return_tensors="pt")
            ref = F.normalize(minilm.model(**tok).last_hidden_state[0].mean(0), dim=0)
            assert torch.allclose(emb[i], ref, atol=1e-5), text
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-6)
    assert minilm.encode([]).shape == (0, 384)
    assert minilm.encode(["word " * 400]).shape == (1, 384)  # truncated at 256 tokens, no error
    assert torch.allclose(minilm.encode(TEXTS[::-1]), emb.flip(0), atol=1e-5)
    with pytest.raises(TypeError):
        minilm.encode("red ring")


def test_minilm_is_semantic(minilm):
    e = minilm.encode(["a photo of a dog", "a picture of a puppy", "a red sports car"])
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2


def _tiny_clip(path, seed: int = 0) -> None:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = [("r", "e"), ("re", "d</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(path))
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=24,
        projection_dim=8,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    CLIPTextModelWithProjection(cfg).save_pretrained(str(path))


def test_clip_text_encoder_tiny(tmp_path):
    _tiny_clip(tmp_path / "clip")
    with mock.patch.object(socket.socket, "connect", _no_network):
        enc = build_text_encoder("clip", path=tmp_path / "clip", batch_size=2)
    assert isinstance(enc, CLIPTextEncoder) and enc.dim == 8
    emb = enc.encode(TEXTS)
    assert emb.shape == (5, 8) and emb.dtype == torch.float32
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            # slow reference: unpadded single text; CLIP pools the final (EOS) token, then projects
            ids = enc.tokenizer([text], truncation=True, max_length=24, return_tensors="pt")["input_ids"]
            assert ids[0, -1] == enc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
            hidden = enc.model.text_model(input_ids=ids).last_hidden_state[0, -1]
            ref = F.normalize(enc.model.text_projection(hidden), dim=0)
            assert torch.allclose(emb[i], ref, atol=1e-5), text
    # truncation at max_position_embeddings instead of an index error
    assert enc.encode(["abc " * 50]).shape == (1, 8)
    # a different checkpoint in a folder of the same name gets a different name (cache key)
    _tiny_clip(tmp_path / "other" / "clip", seed=1)
    assert CLIPTextEncoder(tmp_path / "other" / "clip").name != enc.name
    with pytest.raises(FileNotFoundError):
        CLIPTextEncoder(tmp_path / "nowhere")


def test_hash_encoder():
    enc = HashEncoder(dim=64, seed=3)
    a = enc.encode(["red ring", "blue square", "red ring"])
    assert a.shape == (3, 64) and a.dtype == torch.float32
    assert torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.equal(HashEncoder(dim=64, seed=3).encode(["red ring"])[0], a[0])
    assert not torch.equal(HashEncoder(dim=64, seed=4).encode(["red ring"])[0], a[0])
    assert HashEncoder(64, 3).name != HashEncoder(64, 4).name
    assert HashEncoder(8).encode([]).shape == (0, 8)
    # random directions: off-diagonal cosines of 200 texts in 512-d stay near 0
    e = HashEncoder(512).encode([f"class {i}" for i in range(200)])
    off = (e @ e.T)[~torch.eye(200, dtype=torch.bool)]
    assert off.abs().max() < 0.3 and abs(off.mean()) < 0.01
    with pytest.raises(ValueError):
        HashEncoder(0)


def test_hash_encoder_same_in_new_process():
    code = (
        "from omniseg.text.encoders import HashEncoder; "
        "print(HashEncoder(16, 7).encode(['red ring'])[0].tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout
    here = HashEncoder(16, 7).encode(["red ring"])[0]
    assert torch.allclose(torch.tensor(eval(out)), here, atol=1e-7)


def test_build_text_encoder():
    enc = build_text_encoder("hash", dim=32, seed=1)
    assert isinstance(enc, HashEncoder) and enc.dim == 32
    with pytest.raises(ValueError, match="unknown text encoder 'glove'"):
        build_text_encoder("glove")
