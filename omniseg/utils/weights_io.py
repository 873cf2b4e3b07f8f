"""Reading weight files: the one reader behind training checkpoints and pretrained backbones.

``.safetensors`` files are read with safetensors; ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` files
with ``torch.load(weights_only=True)``, so nothing is unpickled beyond tensors and plain
containers. :mod:`omniseg.engine.checkpoint` (our checkpoints) and :mod:`omniseg.modeling.weights`
(torchvision / timm / MAE checkpoints) both read through :func:`read_weights_file` and raise
:class:`CheckpointError`. This module sits below both (it imports only torch and safetensors).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from omniseg.errors import UserError

StateDict = dict[str, torch.Tensor]

#: suffixes read with ``torch.load(weights_only=True)``
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# Keys under which training scripts nest the weights: MAE / DeiT save {"model": ...},
# Lightning and many others {"state_dict": ...}.
_NESTING_KEYS = ("model", "state_dict", "model_state", "module")


class CheckpointError(UserError, ValueError, RuntimeError):
    """A checkpoint / weights file is missing, cannot be read, or does not fit the model.

    The message names the file. A ValueError and a RuntimeError: the training checkpoints'
    and the pretrained-weights' errors were one of each before they became this one class.
    """


def read_weights_file(path: str | os.PathLike) -> Any:
    """The content of a ``.safetensors`` file (a dict of tensors) or of a ``.pth`` / ``.pt`` /
    ``.bin`` / ``.ckpt`` file (whatever ``torch.load(weights_only=True)`` returns), on the CPU.

    Raises:
        CheckpointError: the file does not exist, has another suffix, or cannot be read
            (corrupt, or a pickle that needs arbitrary classes).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors or {TORCH_SUFFIXES}"
        )
    try:
        if suffix == ".safetensors":
            import safetensors.torch

            return safetensors.torch.load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise their own error types
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e


def unwrap_state_dict(obj: Any, source: str = "<checkpoint>") -> StateDict:
    """Find the tensor dict inside a checkpoint object and strip DDP's ``module.`` prefix.

    Accepts a plain ``{name: tensor}`` dict or one nested under "model" / "state_dict" /
    "model_state" / "module" (MAE saves ``{"model": ..., "optimizer": ..., "epoch": ...}``).
    Non-tensor entries of the weight dict raise :class:`CheckpointError`.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for _ in range(3):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: no tensors found; top-level keys are {sorted(map(str, obj))[:10]}"
            )
        obj = inner
    out: StateDict = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """The ``{name: tensor}`` weights of a file: :func:`read_weights_file`, then
    :func:`unwrap_state_dict` (nesting unwrapped, ``module.`` prefixes stripped)."""
    return unwrap_state_dict(read_weights_file(path), str(path))
