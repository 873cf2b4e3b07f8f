"""On-disk cache of text embeddings, shared safely between processes.

Layout: ``<cache_dir>/<encoder folder>/`` holds ``encoder.json`` (name, dim, for people) and
any number of safetensors shards. Each shard stores one ``embeddings`` tensor (N x D float32)
and, in its metadata, the encoder name and the N keys (SHA-256 of encoder name + exact
text, see :func:`text_key`). Shards are self-describing and written atomically under unique names, so two
processes never write the same file: readers see whole shards or none, and the worst case of
a race is that both compute the same miss (the duplicate rows are identical). Nothing is
unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from omniseg.text.encoders import TextEncoder
from omniseg.utils.atomic import atomic_write_bytes, atomic_write_json

FORMAT = "omniseg-text-cache-v1"


def text_key(encoder_name: str, text: str) -> str:
    """Cache key of one text under one encoder: hex SHA-256 of ``len(name):name`` + text (unambiguous)."""
    return hashlib.sha256(f"{len(encoder_name)}:{encoder_name}{text}".encode()).hexdigest()


def encoder_folder(encoder_name: str) -> str:
    """Readable, collision-safe folder name for an encoder."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_name)[:60]
    return f"{readable}-{hashlib.sha256(encoder_name.encode()).hexdigest()[:8]}"


class CachedEncoder:
    """Wraps a :class:`~omniseg.text.encoders.TextEncoder`; only cache misses reach it.

    Args:
        encoder: the encoder to wrap (its ``name`` must identify its weights).
        cache_dir: root folder of the cache (shared by any number of encoders / processes).

    Attributes:
        hits, misses: texts served from the cache, and distinct texts computed (per encode() call).
    """

    def __init__(self, encoder: TextEncoder, cache_dir: str | os.PathLike):
        self.encoder = encoder
        self.name: str = encoder.name
        self.dim: int = encoder.dim
        self.dir = Path(cache_dir) / encoder_folder(self.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "encoder.json").exists():
            atomic_write_json(
                self.dir / "encoder.json", {"name": self.name, "dim": self.dim, "format": FORMAT}
            )
        self._table: dict[str, torch.Tensor] = {}
        self._loaded: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.refresh()

    def __len__(self) -> int:
        return len(self._table)

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("*.safetensors"))

    def refresh(self) -> int:
        """Load shards written since the last look (by this or another process). Returns rows added."""
        added = 0
        for path in self.shards():
            if path.name in self._loaded:
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                    emb = f.get_tensor("embeddings")
                keys = json.loads(meta.get("keys", "[]"))
            except FileNotFoundError:  # compacted away by another process: its rows live in a newer shard
                continue
            except Exception as e:  # a damaged shard costs a recompute, never a wrong vector
                warnings.warn(f"{path}: unreadable text-cache shard ignored ({e})", stacklevel=2)
                self._loaded.add(path.name)
                continue
            self._loaded.add(path.name)
            if meta.get("encoder") != self.name or emb.ndim != 2 or emb.shape != (len(keys), self.dim):
                warnings.warn(
                    f"{path}: shard does not match encoder {self.name!r} (dim {self.dim}); ignored",
                    stacklevel=2,
                )
                continue
            emb = emb.to(torch.float32)
            for k, row in zip(keys, emb):
                if k not in self._table:
                    self._table[k] = row
                    added += 1
        return added

    def _write_shard(self, keys: list[str], emb: torch.Tensor) -> Path:
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        data = safetensors_save(
            {"embeddings": emb.contiguous()},
            metadata={"format": FORMAT, "encoder": self.name, "keys": json.dumps(keys)},
        )
        atomic_write_bytes(self.dir / name, data)
        self._loaded.add(name)
        return self.dir / name

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Same contract as the wrapped encoder: N x D float32, unit rows, no grad."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings")
        keys = [text_key(self.name, t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self._table}
        if missing:
            self.refresh()
            missing = {k: t for k, t in missing.items() if k not in self._table}
        if missing:
            new_keys = list(missing)
            emb = self.encoder.encode([missing[k] for k in new_keys]).detach().to("cpu", torch.float32)
            if emb.shape != (len(new_keys), self.dim):
                raise ValueError(
                    f"encoder {self.name!r} returned {tuple(emb.shape)}, expected {(len(new_keys), self.dim)}"
                )
            self._write_shard(new_keys, emb)
            for k, row in zip(new_keys, emb):
                self._table[k] = row
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if not texts:
            return torch.empty(0, self.dim, dtype=torch.float32)
        return torch.stack([self._table[k] for k in keys])

    def compact(self) -> Path | None:
        """Merge every shard this process knows into one new shard and delete the old ones.

        Safe with concurrent readers/writers: the merged shard is complete before any old one
        is removed, and shards written meanwhile by others are left alone.
        """
        self.refresh()
        old = [p for p in self.shards() if p.name in self._loaded]
        if len(old) < 2:
            return None
        keys = list(self._table)
        merged = self._write_shard(keys, torch.stack([self._table[k] for k in keys]))
        for p in old:
            if p != merged:
                p.unlink(missing_ok=True)
        return merged
