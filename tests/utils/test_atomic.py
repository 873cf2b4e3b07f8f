"""Atomic writers: content, all-or-nothing replacement, no temp files left (also after a kill),
permissions, which targets are written through and which refused."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from omniseg.errors import Terminated, UserError
from omniseg.utils import atomic
from omniseg.utils.atomic import (
    STDOUT,
    atomic_dir,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

HOST = atomic._HOST  # in every temp name


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


# ----------------------------------------------------------------------------- targets


def test_symlink_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "data" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is kept ...
    assert real.read_text() == "new" and _mode(real) == 0o640  # ... and its file replaced
    assert sorted(os.listdir(real.parent)) == ["real.json"] and sorted(os.listdir(tmp_path)) == ["data", "link.json"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to("data/created.txt")  # relative link: created beside the link's target
    atomic_write_text(dangling, "x")
    assert (real.parent / "created.txt").read_text() == "x" and dangling.is_symlink()


def _unix_socket(path: Path):
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


@pytest.mark.skipif(os.name != "posix", reason="FIFOs, devices and sockets")
@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "socket", "link to fifo"])
def test_non_regular_target_refused_untouched(tmp_path: Path, kind: str) -> None:
    target, keep = tmp_path / "out.json", None
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = Path("/dev/null")
    elif kind == "socket":
        keep = _unix_socket(target)
    else:
        os.mkfifo(tmp_path / "fifo")
        target.symlink_to(tmp_path / "fifo")
    before = os.lstat(target)
    try:
        with pytest.raises(UserError, match=rf"^{re.escape(str(target))}: exists and is not a regular file$"):
            atomic_write_text(target, "x")
    finally:
        if keep is not None:
            keep.close()
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # not replaced
    if kind != "device":
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_empty_path_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="empty output path"):
        atomic_write_text("", "x")
    with pytest.raises(UserError, match="empty output path"):
        with atomic_dir(""):
            pass


def test_disk_full_names_target_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(OSError) as e:
        with atomic_open(target, "w") as f:
            f.write("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a failing write raises
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_unwritable_folder_names_target(tmp_path: Path, monkeypatch) -> None:
    real_create = atomic._create_temp

    def denied(target: Path, made: list[str], folder: bool = False) -> int:
        name = os.path.join(target.parent, atomic._temp_prefix(target) + "x.tmp")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)

    monkeypatch.setattr(atomic, "_create_temp", denied)
    with pytest.raises(PermissionError) as e:
        atomic_write_text(tmp_path / "out.json", "x")
    assert e.value.filename == str(tmp_path / "out.json")
    monkeypatch.setattr(atomic, "_create_temp", real_create)
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError) as e:
            atomic_write_text(ro / "f.txt", "x")
        assert e.value.filename == str(ro / "f.txt") and os.listdir(ro) == []


def test_file_size_limit_in_subprocess(tmp_path: Path) -> None:
    """A real failing write (RLIMIT_FSIZE; Python ignores SIGXFSZ): EFBIG naming the target, no temp."""
    code = (
        "import resource, sys; from omniseg.utils.atomic import atomic_write_bytes\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n    atomic_write_bytes(sys.argv[1], b'x' * 100000)\n"
        "except OSError as e:\n    print(e.errno, e.filename)\n"
    )
    target = tmp_path / "big.bin"
    out = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [str(errno.EFBIG), str(target)], out.stderr
    assert os.listdir(tmp_path) == []


def test_stdout(capsysbinary) -> None:
    atomic_write_json("-", {"a": "é"})
    with atomic_open("-", "wb") as f:
        f.write(b"\x00\x01")
    with atomic_open(STDOUT, "w", encoding="utf-8", newline="") as f:
        f.write("x\r\ny")
    assert capsysbinary.readouterr().out == b'{"a": "\\u00e9"}\x00\x01x\r\ny'


def test_terminated_removes_temp(tmp_path: Path) -> None:
    """SIGTERM arrives as Terminated (cli.py): a BaseException the cleanup also handles."""
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(Terminated):
        with atomic_open(tmp_path / "a.txt", "w") as f:
            f.write("new")
            raise Terminated()
    with pytest.raises(Terminated):
        with atomic_dir(tmp_path / "d") as d:
            (d / "x.png").write_bytes(b"x")
            raise Terminated()
    assert os.listdir(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"


# ----------------------------------------------------------------------------- stale temp files


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temp_name_carries_pid_and_host(tmp_path: Path) -> None:
    me = f"omniseg-{os.getpid()}-{HOST}-"
    with atomic_open(tmp_path / "f.txt", "w") as f:
        (name,) = [n for n in os.listdir(tmp_path)]
        f.write("x")
    assert re.fullmatch(rf"\.f\.txt\.{me}[a-z0-9_]+\.tmp", name)
    with atomic_dir(tmp_path / "d"):
        assert any(re.fullmatch(rf"\.d\.{me}[a-z0-9_]+\.tmp", n) for n in os.listdir(tmp_path))


@pytest.mark.skipif(os.name != "posix", reason="the sweep is POSIX only")
def test_stale_temps_of_dead_writers_are_swept(tmp_path: Path) -> None:
    dead, live = f"{_dead_pid()}-{HOST}", f"{os.getppid()}-{HOST}"
    other_host = "ffffffff" if HOST != "ffffffff" else "00000000"
    stale = [f".f.txt.omniseg-{dead}-abc123.tmp", f".other.json.omniseg-{dead}-zz9_.tmp"]
    kept = [f".f.txt.omniseg-{live}-abc123.tmp", ".f.txt.abcdefgh.tmp", ".hidden", f"f.txt.omniseg-{dead}-a.tmp",
            f".f.txt.omniseg-{dead.split('-')[0]}-{other_host}-abc123.tmp"]  # another host's pid means nothing here
    for n in stale + kept:
        (tmp_path / n).write_text("partial")
    (tmp_path / f".pngs.omniseg-{dead}-q1.tmp").mkdir()  # a staged folder of a killed writer
    (tmp_path / f".pngs.omniseg-{dead}-q1.tmp" / "a.png").write_bytes(b"x")
    atomic_write_text(tmp_path / "f.txt", "new")
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["f.txt"])


@pytest.mark.skipif(os.name != "posix", reason="the sweep is POSIX only")
def test_sweep_puts_back_a_moved_aside_folder(tmp_path: Path) -> None:
    """Killed between moving the old folder aside and renaming the new one in: the old one returns."""
    dead = f"{_dead_pid()}-{HOST}"
    old = tmp_path / f".pngs.omniseg-{dead}-r2.old"
    old.mkdir()
    (old / "a.png").write_bytes(b"old")
    (tmp_path / f".pngs.omniseg-{dead}-r2.tmp").mkdir()  # the half-written new one
    (tmp_path / f".more.omniseg-{dead}-r3.old").mkdir()  # its target exists: just removed
    (tmp_path / "more").mkdir()
    atomic_write_text(tmp_path / "x.txt", "x")
    assert sorted(os.listdir(tmp_path)) == ["more", "pngs", "x.txt"]
    assert (tmp_path / "pngs" / "a.png").read_bytes() == b"old"


# ----------------------------------------------------------------------------- folders


def test_atomic_dir_replaces_folder_as_a_whole(tmp_path: Path, umask) -> None:
    umask(0o022)
    target = tmp_path / "pngs"
    with atomic_dir(target) as d:
        assert d.parent == tmp_path and not target.exists()
        (d / "a.png").write_bytes(b"1")
        (d / "b.png").write_bytes(b"1")
    assert sorted(os.listdir(target)) == ["a.png", "b.png"] and _mode(target) == 0o755
    os.chmod(target, 0o750)
    with atomic_dir(target) as d:
        (d / "c.png").write_bytes(b"2")
        assert sorted(os.listdir(target)) == ["a.png", "b.png"]  # the old folder is whole meanwhile
    assert os.listdir(target) == ["c.png"] and _mode(target) == 0o750  # nothing of the old one is left
    assert os.listdir(tmp_path) == ["pngs"]


def test_atomic_dir_failure_keeps_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "pngs"
    target.mkdir()
    (target / "a.png").write_bytes(b"old")
    with pytest.raises(ValueError, match="boom"):
        with atomic_dir(target) as d:
            (d / "b.png").write_bytes(b"new")
            raise ValueError("boom")
    assert os.listdir(target) == ["a.png"] and os.listdir(tmp_path) == ["pngs"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "new"):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["pngs"]


def test_atomic_dir_targets(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file: exists and is not a folder"):
        with atomic_dir(tmp_path / "file"):
            pass
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with atomic_dir(tmp_path / "link") as d:
        (d / "n.png").write_bytes(b"n")
    assert (tmp_path / "link").is_symlink() and os.listdir(real) == ["n.png"]
    assert sorted(os.listdir(tmp_path)) == ["file", "link", "real"]


def test_atomic_dir_never_swaps_away_foreign_files(tmp_path: Path) -> None:
    """Only a folder holding nothing but what the writer produces (here: its staged kinds, *.png) is replaced."""
    target = tmp_path / "pngs"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with atomic_dir(target) as d:
        (d / "new.png").write_bytes(b"new")
    assert os.listdir(target) == ["new.png"]
    (target / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match=r"pngs: exists and holds files .*\(e\.g\. precious\.txt\)"):
        with atomic_dir(target) as d:
            (d / "newer.png").write_bytes(b"newer")
    assert sorted(os.listdir(target)) == ["new.png", "precious.txt"] and os.listdir(tmp_path) == ["pngs"]


def test_atomic_dir_owned_patterns_are_checked_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    entered = []
    with pytest.raises(UserError, match=r"\(e\.g\. sub\)"):
        with atomic_dir(target, owned=("*.png",)):
            entered.append(1)
    assert entered == [] and os.listdir(target) == ["sub"]
    (target / "sub").rmdir()
    with atomic_dir(target, owned=("*.png",)) as d:  # an empty folder is always replaceable
        (d / "a.png").write_bytes(b"a")
    assert os.listdir(target) == ["a.png"]


@pytest.mark.parametrize("folder", [False, True])
def test_an_interrupt_the_instant_after_the_temp_is_created_leaves_nothing(tmp_path: Path, monkeypatch, folder) -> None:
    """SIGTERM (Terminated) / Ctrl-C can land right after the temporary file or folder exists and before the
    writer has stored its name: it is known before it is created, so it is removed all the same."""
    real = os.mkdir if folder else os.open

    def create_then_interrupt(name, *args):
        made = real(name, *args)
        if not folder:
            os.close(made)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "mkdir" if folder else "open", create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        if folder:
            with atomic_dir(tmp_path / "pngs") as d:
                (d / "a.png").write_bytes(b"x")
        else:
            atomic_write_text(tmp_path / "out.json", "x")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
