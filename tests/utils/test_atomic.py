"""Atomic writers: content, all-or-nothing replacement, no temp files left, permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from omniseg.utils import atomic
from omniseg.utils.atomic import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    saved = os.umask(0o022)
    os.umask(saved)

    def _set(mask: int) -> None:
        os.umask(mask)

    yield _set
    os.umask(saved)


def test_write_text_bytes_json(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "héllo\nworld")
    assert (tmp_path / "a.txt").read_bytes() == "héllo\nworld".encode()
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff\x10")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff\x10"
    atomic_write_json(tmp_path / "c.json", {"a": [1, 2.5, None]}, indent=1)
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2.5, None]}
    assert (tmp_path / "c.json").read_text() == '{\n "a": [\n  1,\n  2.5,\n  null\n ]\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json"]


def test_creates_parent_folders_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "f.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["f.txt"]


def test_exception_leaves_previous_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old content")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target, "w", encoding="utf-8") as f:
            f.write("partial new content")
            f.flush()
            # while writing, the data goes to a hidden sibling, not the target
            assert target.read_text() == "old content"
            assert len(os.listdir(tmp_path)) == 2
            raise RuntimeError("boom")
    assert target.read_text() == "old content"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_exception_on_new_file_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "new.bin", "wb") as f:
            f.write(b"abc")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_json_serialization_error_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_bad_open_arguments_leave_nothing(tmp_path: Path) -> None:
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(LookupError):
        with atomic_open(tmp_path / "f.txt", "w", encoding="no-such-codec"):
            pass
    assert os.listdir(tmp_path) == []
    if fds is not None:  # the temporary file's descriptor is closed
        assert len(os.listdir("/proc/self/fd")) == fds


def test_read_mode_rejected(tmp_path: Path) -> None:
    for mode in ("r", "a", "rb"):
        with pytest.raises(ValueError, match="for writing"):
            with atomic_open(tmp_path / "f", mode):
                pass
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_mode_follows_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)  # set after import: the mode must follow the umask at write time
    atomic_write_text(tmp_path / "f.txt", "x")
    assert _mode(tmp_path / "f.txt") == expected
    # the same as a plain open() would give
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    assert _mode(tmp_path / "plain.txt") == expected


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_existing_file_keeps_its_mode(tmp_path: Path, umask) -> None:
    umask(0o022)
    target = tmp_path / "script.sh"
    target.write_text("old")
    os.chmod(target, 0o750)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert _mode(target) == 0o750


def test_current_umask_matches_os(umask) -> None:
    for mask in (0o022, 0o077, 0o027):
        umask(mask)
        assert atomic._current_umask() == mask
