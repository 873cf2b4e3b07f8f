"""Source trees of two commits for side-by-side benchmarks (bench/recipe_equivalence.py,
bench/step_speed.py): this checkout as it is ("WORKTREE"), or a revision exported with
``git archive`` into a folder. Each side's processes then import omniseg from their own tree
(:func:`side_env`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def prepare_tree(spec: str, dest: Path, reuse: bool = False) -> dict:
    """The tree of ``spec``: WORKTREE (this checkout) or a revision exported into ``dest``.

    ``reuse``: ``dest`` is a cache folder; the export goes to ``dest/<commit>`` and one completed
    earlier (marked ``.complete``) is used as it is.
    """
    if spec == "WORKTREE":
        return {"spec": spec, "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain")),
                "tree": str(ROOT)}
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"{spec!r}: not a revision of {ROOT} (nor WORKTREE)") from None
    if reuse:
        dest = dest / commit
    if not (reuse and (dest / ".complete").exists()):
        dest.mkdir(parents=True, exist_ok=reuse)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
        archive.stdout.close()
        if archive.wait() != 0:
            raise SystemExit(f"git archive {commit} failed")
        (dest / ".complete").touch()
    return {"spec": spec, "commit": commit, "dirty": False, "tree": str(dest)}


def side_env(tree: str) -> dict[str, str]:
    """Environment of a side's process: its own omniseg, one thread, fixed hash seed."""
    return {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
