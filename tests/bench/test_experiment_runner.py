"""bench/experiment_runner.py: the torch threads each run gets, and the machine string its record carries."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

BENCH = ("experiment_runner",)


@pytest.mark.parametrize("threads", [1, 2])
def test_run_jobs_gives_each_run_its_threads(bench, tmp_path: Path, threads: int) -> None:
    er = bench["experiment_runner"]
    jobs = [{"name": f"job{i}"} for i in range(2)]
    # each job writes the thread counts it sees; run_jobs appends --overwrite (a fresh folder), ignored here
    script = "import os, sys; open(sys.argv[1], 'w').write(os.environ['OMP_NUM_THREADS'] + os.environ['MKL_NUM_THREADS'])"
    done = er.run_jobs(jobs, tmp_path, lambda j: [sys.executable, "-c", script, str(tmp_path / j["name"] / "t")],
                       parallel=2, cwd=tmp_path, threads=threads)
    assert sorted(done) == ["job0", "job1"]
    assert [(tmp_path / j["name"] / "t").read_text() for j in jobs] == [f"{threads}{threads}"] * 2
    assert all((tmp_path / j["name"] / "wall_s.txt").exists() for j in jobs)


def test_machine_names_the_threads(bench) -> None:
    er = bench["experiment_runner"]
    assert er.machine().endswith(", 1 torch thread per run")
    assert er.machine().startswith(f"{platform.machine()} {er.cpu()}, ") and "bf16" in er.cpu()
    assert er.machine(2).endswith(", 2 torch threads per run")
    args = er.driver_parser("doc", ["t"], Path("runs"), Path("results")).parse_args(["t", "--run-threads", "2"])
    assert args.run_threads == 2


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_run_threads_must_be_positive(bench, capsys, value: str) -> None:
    """The drivers' argparse usage error (exit 2, like their other options), naming the option."""
    ap = bench["experiment_runner"].driver_parser("doc", ["t"], Path("runs"), Path("results"))
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["t", f"--run-threads={value}"])
    assert e.value.code == 2 and "argument --run-threads:" in capsys.readouterr().err


@pytest.mark.parametrize("native, refused", [(False, True), (True, False), (None, False)])
def test_bf16_jobs_are_refused_on_a_cpu_without_native_bf16(bench, monkeypatch, native, refused) -> None:
    from omniseg.engine import precision

    er = bench["experiment_runner"]
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    jobs = [{"name": "x_s0", "amp": "none"}, {"name": "x_bf16_s0", "amp": "bf16"}, {"name": "y_bf16_s0", "amp": "bf16"}]
    if refused:
        with pytest.raises(SystemExit, match=r"^x_bf16_s0 \(and 1 more\): bf16 autocast, .*--amp none") as e:
            er.refuse_slow_bf16(jobs)
        assert "\n" not in str(e.value)
    else:
        er.refuse_slow_bf16(jobs)
    er.refuse_slow_bf16(jobs[:1])  # fp32 jobs run anywhere
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    er.refuse_slow_bf16(jobs)  # they would train on the GPU
