"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

Layout under ``<output_dir>/checkpoints``::

    step_00000200/
        model.safetensors      model weights
        ema.safetensors        EMA weights (if an EMA is kept)
        optimizer.safetensors  optimizer state tensors, keys "state/<param index>/<name>"
        state.json             step, optimizer param groups + non-tensor state, scheduler,
                               grad scaler, data sampler and per-rank RNG states, extras
        config.json            the resolved run config
    latest                     text file: name of the newest complete checkpoint folder

A checkpoint is written into a hidden temporary folder and renamed into place once every
file is on disk, then ``latest`` is replaced atomically: a crash at any moment leaves
either the previous checkpoint or the new one, never a torn one.

Files are read with :mod:`omniseg.utils.weights_io`, whose :class:`CheckpointError` this module
re-exports (:mod:`omniseg.modeling.weights` raises the same class).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from omniseg.engine.ema import ModelEMA, unwrap_model
from omniseg.utils.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from omniseg.utils.weights_io import CheckpointError, read_state_dict, read_weights_file

LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------- tensors


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint that does not fit the model or optimizer it is loaded into (another
    model config or recipe): not damage, so resuming does not fall back to an older one for it."""


def _tensors_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors sharing memory)."""
    out, seen = {}, set()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        if t.numel() and t.data_ptr() in seen:
            t = t.clone()
        if t.numel():
            seen.add(t.data_ptr())
        out[k] = t
    return out


def optimizer_state_split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{idx}/{name}"] = value
            else:
                rest.setdefault(str(idx), {})[name] = value
            rest.setdefault(str(idx), {})
    return tensors, {"state": rest, "param_groups": state["param_groups"]}


def optimizer_state_join(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_split`."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in rest["state"].items()}
    for key, t in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": rest["param_groups"]}


# --------------------------------------------------------------------------- RNG


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as JSON-able values."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s.cpu()) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# --------------------------------------------------------------------------- find


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoint folders under ``root`` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder named by ``root/latest``; the newest complete folder if the pointer is bad."""
    root = Path(root)
    try:
        target = root / (root / LATEST).read_text(encoding="utf-8").strip()
        if _STEP_RE.match(target.name) and (target / "state.json").exists():
            return target
    except (OSError, ValueError):  # no pointer, or a damaged one: scan the folders
        pass
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``step_N`` folder from a run folder, a checkpoints folder (its ``latest``) or the step itself."""
    p = Path(path)
    if (p / "state.json").exists():
        return p
    for root in (p, p / "checkpoints"):
        if root.is_dir():
            found = latest_checkpoint(root)
            if found is not None:
                return found
    raise FileNotFoundError(f"{p}: no checkpoint here (expected step_N/state.json, a 'latest' pointer, or checkpoints/)")


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: ModelEMA | None = None,
    scaler: Any = None,
    data_state: Any = None,
    rng_states: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 0,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and point ``latest`` at it.

    Call on rank 0 only. ``scheduler``/``scaler``/``data_state`` need ``state_dict()``
    (scheduler, scaler) or must already be JSON-able (data_state). ``rng_states`` holds
    one entry per rank (see :func:`capture_rng_state`). ``keep`` > 0 deletes all but the
    newest ``keep`` checkpoints afterwards.

    Returns:
        The checkpoint folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a crash mid-save; one writer per run
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; checkpoints are ordinary run outputs
        weights = _tensors_for_safetensors(unwrap_model(model).state_dict())
        atomic_write_bytes(
            tmp / "model.safetensors", safetensors.torch.save(weights, metadata={"step": str(step)})
        )
        state: dict[str, Any] = {"format": "omniseg-checkpoint-1", "step": step}
        if optimizer is not None:
            tensors, rest = optimizer_state_split(optimizer.state_dict())
            atomic_write_bytes(
                tmp / "optimizer.safetensors", safetensors.torch.save(_tensors_for_safetensors(tensors))
            )
            state["optimizer"] = rest
        if ema is not None:
            ema_w = _tensors_for_safetensors(ema.state_dict())
            atomic_write_bytes(tmp / "ema.safetensors", safetensors.torch.save(ema_w))
            state["ema"] = ema.extra_state()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        state["data"] = data_state
        state["rng"] = rng_states
        state["extra"] = extra or {}
        atomic_write_json(tmp / "state.json", state)
        atomic_write_json(tmp / "config.json", config or {}, indent=2)
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step after a resume: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{final.name}-", dir=root))
            os.replace(final, old / final.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    if keep > 0:
        for _, old_dir in list_checkpoints(root)[:-keep]:
            if old_dir != final:
                shutil.rmtree(old_dir, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint folder's ``*.safetensors`` file, read as is (keys exactly as saved)."""
    if not path.exists():
        raise CheckpointError(f"{path}: missing (incomplete or foreign checkpoint)")
    return read_weights_file(path)


def load_state_into(module: nn.Module, weights: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Load ``weights`` (read from ``path``) into ``module``; every model tensor must be there with its shape.

    Raises:
        CheckpointError: naming ``path`` and the first tensor whose shape differs (both shapes), or
            the first missing / unexpected tensor (e.g. the weights of another recipe or model config).
    """
    module = unwrap_model(module)
    own = module.state_dict()
    for key, mine in own.items():
        if key in weights and tuple(weights[key].shape) != tuple(mine.shape):
            raise CheckpointMismatchError(
                f"{path}: does not match the model: {key} is {tuple(weights[key].shape)} in the file but "
                f"{tuple(mine.shape)} in the model (weights of another recipe or model config?)")
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        parts = [f"{len(missing)} model tensors missing (first: {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})" if unexpected else ""]
        raise CheckpointMismatchError(f"{path}: does not match the model: " + ", ".join(p for p in parts if p))
    module.load_state_dict(weights, strict=True)


def load_weights_into(module: nn.Module, path: str | os.PathLike) -> None:
    """:func:`load_weights` from ``path`` (a file or a checkpoint folder) into ``module`` with
    :func:`load_state_into`'s checks: a :class:`CheckpointError` naming the file if it is damaged
    or does not fit."""
    file = _weights_file(path)
    load_state_into(module, read_state_dict(file), file)


def read_state(step_dir: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint folder's ``state.json``; a :class:`CheckpointError` naming it if missing or damaged."""
    path = Path(step_dir) / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (incomplete or foreign checkpoint)") from None
    except (OSError, ValueError) as e:  # ValueError: invalid JSON or UTF-8
        raise CheckpointError(f"{path}: damaged checkpoint state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path}: damaged checkpoint state (expected an object with an integer 'step')")
    return state


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: ModelEMA | None = None,
    scaler: Any = None,
) -> dict[str, Any]:
    """Restore the given objects from a checkpoint folder (or a root with a ``latest``).

    Returns:
        The JSON state: "step", "data" (sampler state), "rng" (per-rank list), "extra".
    """
    path = Path(path)
    if not (path / "state.json").exists():
        resolved = latest_checkpoint(path)
        if resolved is None:
            raise CheckpointError(f"{path}: no checkpoint here (no state.json and no complete step_* folder)")
        path = resolved
    state = read_state(path)
    load_state_into(model, _read_safetensors(path / "model.safetensors"), path / "model.safetensors")
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"{path / 'state.json'}: has no optimizer state")
        tensors = _read_safetensors(path / "optimizer.safetensors")
        try:
            optimizer.load_state_dict(optimizer_state_join(tensors, state["optimizer"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointMismatchError(f"{path}: optimizer state does not match: {e}") from None
    if ema is not None:
        if (path / "ema.safetensors").exists():
            ema.load_state_dict(_read_safetensors(path / "ema.safetensors"), state.get("ema"))
        else:  # EMA switched on for a resumed run: start it from the restored weights
            ema.module.load_state_dict(unwrap_model(model).state_dict())
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    state["path"] = str(path)
    return state


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a checkpoint folder (or a root with a ``latest``, or a run folder), a .safetensors file,
    or a foreign .pth / .pt / .bin / .ckpt file.

    Files are read with :func:`omniseg.utils.weights_io.read_state_dict`, the reader
    :mod:`omniseg.modeling.weights` uses too: foreign files with ``torch.load(weights_only=True)``
    (no arbitrary unpickling), weights nested under "model" / "state_dict" / ... unwrapped and
    DDP's ``module.`` prefixes stripped.
    """
    return read_state_dict(_weights_file(path))


def _weights_file(path: str | os.PathLike) -> Path:
    """The weights file :func:`load_weights` reads for ``path``."""
    path = Path(path)
    if path.is_dir():
        ckpt = path if (path / "model.safetensors").exists() else latest_checkpoint(path)
        if ckpt is None and (path / "checkpoints").is_dir():  # a run folder
            ckpt = latest_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise CheckpointError(f"{path}: no model.safetensors and no checkpoint folder")
        path = ckpt / "model.safetensors"
        if not path.exists():
            raise CheckpointError(f"{path}: missing (incomplete or foreign checkpoint)")
    return path
