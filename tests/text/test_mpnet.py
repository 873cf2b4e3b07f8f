"""The optional all-mpnet-base-v2 encoder: the error when its parts are absent, the unpack-once
cache of a split zip (on a tiny fake zip), and -- only where `make mpnet` installed the parts --
the real model."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from pathlib import Path
from unittest import mock

import pytest
import torch

from omniseg.engine.config import ConfigError
from omniseg.errors import UserError
from omniseg.text import encoders
from omniseg.text.encoders import (
    MPNET_DISTS,
    MPNetEncoder,
    build_text_encoder,
    mpnet_model_dir,
    mpnet_part_files,
    omniseg_cache_dir,
    unpack_split_zip,
)


def _fake_parts(tmp_path: Path, n: int = 3) -> tuple[list[Path], str]:
    """A zip of ``model/config.json`` + ``model/weights.bin`` split into ``n`` part files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model/config.json", '{"hidden_size": 4}')
        zf.writestr("model/weights.bin", bytes(range(256)) * 40)
    data = buf.getvalue()
    step = -(-len(data) // n)
    parts = []
    (tmp_path / "site").mkdir()
    for i in range(n):
        p = tmp_path / "site" / f"fake.zip.{i + 1:03d}"
        p.write_bytes(data[i * step : (i + 1) * step])
        parts.append(p)
    return parts, hashlib.sha256(data).hexdigest()


def _no_tmp_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name]


def test_unpack_split_zip_once_and_reuse(tmp_path):
    parts, sha = _fake_parts(tmp_path)
    dest = tmp_path / "cache" / "text-encoders" / "fake"
    assert unpack_split_zip(parts, sha, dest) == dest
    assert (dest / "model" / "config.json").read_text() == '{"hidden_size": 4}'
    assert (dest / "model" / "weights.bin").read_bytes() == bytes(range(256)) * 40
    assert _no_tmp_left(dest.parent)
    mtime = (dest / "model" / "weights.bin").stat().st_mtime_ns
    for p in parts:  # reuse: the parts are not read again (here: gone)
        p.unlink()
    assert unpack_split_zip(parts, sha, dest) == dest
    assert (dest / "model" / "weights.bin").stat().st_mtime_ns == mtime


def test_unpack_split_zip_hash_mismatch_leaves_nothing(tmp_path):
    parts, sha = _fake_parts(tmp_path)
    dest = tmp_path / "cache" / "fake"
    with pytest.raises(UserError, match="sha256"):
        unpack_split_zip(parts[::-1], sha, dest)  # wrong order: different bytes
    assert not dest.exists() and _no_tmp_left(dest.parent)
    with pytest.raises(UserError, match="sha256"):
        unpack_split_zip(parts, "0" * 64, dest)
    assert not dest.exists() and _no_tmp_left(dest.parent)


def test_unpack_split_zip_refuses_foreign_folder(tmp_path):
    parts, sha = _fake_parts(tmp_path)
    dest = tmp_path / "cache" / "fake"
    (dest / "model").mkdir(parents=True)  # e.g. a half copy made by hand: never used as is
    with pytest.raises(UserError, match="delete the folder"):
        unpack_split_zip(parts, sha, dest)


def test_unpack_split_zip_concurrent_first_uses(tmp_path):
    parts, sha = _fake_parts(tmp_path)
    dest = tmp_path / "cache" / "fake"
    barrier, results, errors = threading.Barrier(6), [], []

    def use():
        barrier.wait()
        try:
            results.append(unpack_split_zip(parts, sha, dest))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [dest] * 6
    assert (dest / "model" / "weights.bin").read_bytes() == bytes(range(256)) * 40
    assert _no_tmp_left(dest.parent)


def test_unpack_lost_race_uses_winner(tmp_path, monkeypatch):
    """Another process finishes between our check and our rename: ours is discarded."""
    parts, sha = _fake_parts(tmp_path)
    dest = tmp_path / "cache" / "fake"
    real_rename = encoders.os.rename

    def rename(src, dst):
        if Path(dst) == dest and not dest.exists():
            monkeypatch.setattr(encoders.os, "rename", real_rename)
            unpack_split_zip(parts, sha, dest)  # the "other process" wins
        return real_rename(src, dst)

    monkeypatch.setattr(encoders.os, "rename", rename)
    assert unpack_split_zip(parts, sha, dest) == dest
    assert (dest / "model" / "config.json").is_file() and _no_tmp_left(dest.parent)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNISEG_CACHE", str(tmp_path / "c"))
    assert omniseg_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("OMNISEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert omniseg_cache_dir() == tmp_path / "x" / "omniseg"


def test_mpnet_absent_is_one_clear_user_error(monkeypatch, tmp_path):
    import importlib.metadata as md

    def not_installed(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", not_installed)
    with pytest.raises(UserError, match="make mpnet") as ei:
        mpnet_part_files()
    assert "text.encoder=mpnet needs the optional weights" in str(ei.value)
    assert all(d in str(ei.value) for d in MPNET_DISTS)
    monkeypatch.setenv("OMNISEG_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="make mpnet"):
        build_text_encoder("mpnet")
    assert not list(tmp_path.rglob("*.json"))  # nothing unpacked, nothing downloaded


def test_mpnet_parts_unpack_into_cache(monkeypatch, tmp_path):
    """mpnet_model_dir wires the part lookup, the pinned hash and the cache folder together."""
    parts, sha = _fake_parts(tmp_path)
    monkeypatch.setattr(encoders, "mpnet_part_files", lambda: parts)
    monkeypatch.setattr(encoders, "MPNET_ZIP_SHA256", sha)
    monkeypatch.setattr(encoders, "MPNET_ZIP_FOLDER", "model")
    path = mpnet_model_dir(tmp_path / "cache")
    assert path == tmp_path / "cache" / "text-encoders" / f"model-{sha[:12]}" / "model"
    assert (path / "config.json").is_file()
    monkeypatch.setattr(encoders, "mpnet_part_files", lambda: pytest.fail("parts read again"))
    assert mpnet_model_dir(tmp_path / "cache") == path


def _mpnet_installed() -> bool:
    try:
        mpnet_part_files()
    except UserError:
        return False
    return True


def _no_network(*args, **kwargs):
    raise AssertionError("text encoders must not touch the network")


@pytest.mark.skipif(not _mpnet_installed(), reason="optional all-mpnet-base-v2 parts not installed (make mpnet)")
def test_mpnet_real_model_synonyms_closer():
    # unpacks once into the user's omniseg cache ($OMNISEG_CACHE or ~/.cache/omniseg), then reuses it
    with (
        mock.patch.object(socket.socket, "connect", _no_network),
        mock.patch.object(socket, "create_connection", _no_network),
    ):
        enc = MPNetEncoder(batch_size=2)
    assert enc.dim == 768 and enc.name == "all-mpnet-base-v2"
    e = enc.encode(["crimson hoop", "red ring", "blue square", "spaceship"])
    assert e.shape == (4, 768) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.05 and sim[0, 1] > sim[0, 3] + 0.05
    # batched == one at a time (padding does not leak into the mean)
    assert torch.allclose(torch.cat([enc.encode([t]) for t in ["red ring", "spaceship"]]), e[[1, 3]], atol=1e-5)


@pytest.mark.skipif(not _mpnet_installed(), reason="optional all-mpnet-base-v2 parts not installed (make mpnet)")
def test_mpnet_embed_dim_mismatch_is_config_error():
    from omniseg.recipes.open_vocab import TextConfig, build_phrase_embedder

    with pytest.raises(ConfigError, match=r"768-d embeddings but model\.embed_dim=384"):
        build_phrase_embedder(TextConfig(encoder="mpnet"), 384)
    embed = build_phrase_embedder(TextConfig(encoder="mpnet"), 768)
    assert embed is not None


def test_unpack_finished_by_another_between_the_checks(tmp_path, monkeypatch):
    """Our first check ran before another first use renamed its complete copy in: use it, no error."""
    import omniseg.text.encoders as enc

    parts, sha = _fake_parts(tmp_path)
    dest = tmp_path / "cache" / "fake"
    unpack_split_zip(parts, sha, dest)  # the other first use, complete
    real, calls = enc._unpacked_ok, []

    def first_check_too_early(path, digest):
        calls.append(path)
        return False if len(calls) == 1 else real(path, digest)

    monkeypatch.setattr(enc, "_unpacked_ok", first_check_too_early)
    assert unpack_split_zip(parts, sha, dest) == dest and len(calls) == 2
