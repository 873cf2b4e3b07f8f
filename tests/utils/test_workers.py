"""Pool start methods (spawn / forkserver with preload) and the workers' signal handling.

The forkserver is one per process and keeps the preload it was started with, so each case runs in
a fresh ``python`` of its own, with its helper modules in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omniseg.utils import workers
from omniseg.utils.workers import pool_context

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver is used on Linux only")

PROBE = """
import os, signal, sys

def probe(_):
    ppid = os.getppid()
    return {"ppid": ppid, "preloaded": "colorsys" in sys.modules, "server_threads": len(os.listdir(f"/proc/{ppid}/task")),
            "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
            "sigterm": getattr(signal.getsignal(signal.SIGTERM), "__name__", None),
            "probe_var": os.environ.get("PROBE_VAR"), "server_var": os.environ.get("OMNISEG_FORKSERVER")}
"""


def _run(tmp_path: Path, main: str, new_session: bool = False) -> subprocess.CompletedProcess:
    """Run ``main`` (a script) in a fresh python with ``tmp_path`` on its path."""
    (tmp_path / "probe.py").write_text(PROBE, encoding="utf-8")
    (tmp_path / "main.py").write_text(textwrap.dedent(main), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(tmp_path / "main.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, start_new_session=new_session)


def test_spawn_without_preload_and_off_linux(monkeypatch):
    assert pool_context().get_start_method() == "spawn"
    for platform in ("win32", "darwin"):  # no forkserver on Windows; fork after system frameworks on macOS
        monkeypatch.setattr(workers.sys, "platform", platform)
        assert pool_context(preload=["colorsys"]).get_start_method() == "spawn"


POOL_MAIN = """
import json, os
import probe
from omniseg.utils.workers import pool_context, quiet_pool_worker

if __name__ == "__main__":
    ctx = pool_context(preload={preload!r}, server_env={{"PROBE_VAR": "x"}})
    with ctx.Pool(2, initializer=quiet_pool_worker) as pool:
        rows = pool.map(probe.probe, range(4), chunksize=1)
    print(json.dumps({{"method": ctx.get_start_method(), "pid": os.getpid(), "rows": rows,
                      "parent_env": [k for k in ("PROBE_VAR", "OMNISEG_FORKSERVER") if k in os.environ]}}))
"""


@linux_only
def test_forkserver_workers_come_from_a_single_threaded_preloaded_server(tmp_path):
    res = _run(tmp_path, POOL_MAIN.format(preload=["colorsys"]))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["method"] == "forkserver" and out["parent_env"] == []
    for row in out["rows"]:
        assert row["ppid"] != out["pid"]  # forked by the server, not by the parent
        assert row["preloaded"] and row["server_threads"] == 1
        assert row["sigint_ignored"] and row["sigterm"] == "_exit_quietly"
        assert row["probe_var"] == "x" and row["server_var"] is None  # server_env reached the server, only it


def test_spawn_workers_are_children_of_the_parent(tmp_path):
    res = _run(tmp_path, POOL_MAIN.format(preload=[]))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["method"] == "spawn"
    for row in out["rows"]:
        assert row["ppid"] == out["pid"] and not row["preloaded"]
        assert row["sigint_ignored"] and row["sigterm"] == "_exit_quietly"


@linux_only
def test_ctrl_c_while_the_server_preloads_leaves_no_traceback(tmp_path):
    # Ctrl-C (SIGINT to the whole process group) while the server's preload takes its time: the
    # parent is interrupted; the server (which must not die of it) and anything it forks after the
    # parent has gone print nothing. stderr is read until every process holding it has exited.
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(1.0)\n", encoding="utf-8")
    res = _run(tmp_path, """
        import os, signal
        import probe
        from omniseg.utils.workers import pool_context, quiet_pool_worker

        if __name__ == "__main__":
            signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGINT))
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            try:
                with pool_context(preload=["slow"]).Pool(1, initializer=quiet_pool_worker) as pool:
                    pool.map(probe.probe, range(2))
            except KeyboardInterrupt:
                print("interrupted")
        """, new_session=True)
    assert res.returncode == 0 and res.stdout.strip() == "interrupted", res.stderr
    assert res.stderr == ""
