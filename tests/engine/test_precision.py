from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from omniseg.engine import precision


def _cpu_flags() -> set[str] | None:
    """The first CPU's feature flags from /proc/cpuinfo (Linux), None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 CPU flags")
def test_native_bf16_agrees_with_the_cpu_flags():
    # oneDNN's bf16 kernels need AVX-512 BW + VL + DQ on x86; without them it has none
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags")
    native = precision.cpu_bf16_native()
    if native is None:
        pytest.skip("this torch build does not say (no oneDNN)")
    assert native == ({"avx512bw", "avx512vl", "avx512dq"} <= flags)
    assert precision.cpu_capability().startswith("AVX512" if "avx512f" in flags else "AVX")


def test_bf16_warning_only_for_bf16_on_a_cpu_without_native_kernels(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(precision, "cpu_capability", lambda: "AVX2")
    line = precision.bf16_warning("bf16", cpu)
    assert line.startswith("warning: train.amp=bf16") and "AVX2" in line and "train.amp=none" in line
    assert "\n" not in line
    assert precision.bf16_warning("none", cpu) is None
    assert precision.bf16_warning("bf16", cuda) is None
    for native in (True, None):  # native kernels, or a torch that does not say
        monkeypatch.setattr(precision, "cpu_bf16_native", lambda native=native: native)
        assert precision.bf16_warning("bf16", cpu) is None
