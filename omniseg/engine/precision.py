"""Whether this CPU runs bf16 autocast at speed.

PyTorch's CPU bf16 kernels (oneDNN) need AVX-512 (BW, VL, DQ; fastest with AVX512-BF16 / AMX) on x86, or the
BF16 extension on ARM. Without them (e.g. an AVX2-only AMD EPYC) bf16 matmuls and convolutions fall back to
slow reference loops: measured there, a MAL ViT-S training step under ``train.amp=bf16`` took 35.6 s against
2.8 s in fp32, 12.8x slower (bench/results/recipe_speed_mal_avx2_{bf16,none}.json), where a CPU with
AVX512-BF16 made the same step 2x *faster* (recipe_speed_mal{_bf16,}.json). :func:`bf16_warning` is the one line
the trainer prints then.
"""

from __future__ import annotations

import torch

#: the slowdown measured above, quoted by the trainer's warning and the table drivers' refusal
MEASURED_SLOWDOWN = "a MAL step 13x slower than fp32"


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels dispatch to ("AVX2", "AVX512", ...; "" if unknown)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return ""


def cpu_bf16_native() -> bool | None:
    """True when oneDNN has bf16 kernels for this CPU, False when bf16 falls back to slow loops, None when torch
    does not say (a build without oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def bf16_warning(amp: str, device: torch.device) -> str | None:
    """A one-line warning for bf16 autocast on a CPU without native bf16 kernels, else None."""
    if amp != "bf16" or device.type != "cpu" or cpu_bf16_native() is not False:
        return None
    return (f"warning: train.amp=bf16 on a CPU without native bf16 kernels (torch dispatches to "
            f"{cpu_capability() or 'an unknown ISA'}): bf16 autocast runs many times slower than fp32 here "
            f"({MEASURED_SLOWDOWN}); use train.amp=none on this machine")
