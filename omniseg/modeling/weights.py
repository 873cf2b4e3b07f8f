"""Loading foreign backbone checkpoints (torchvision ResNet, timm / MAE ViT).

One remapping function per backbone turns a checkpoint's state dict into our names, like
timm's ``checkpoint_filter_fn``:

* :func:`resnet_filter_fn` - torchvision ``resnet*`` ImageNet checkpoints (drops ``fc``);
* :func:`vit_filter_fn` - timm ``vit_*`` and MAE checkpoints (drops the classifier head and
  the MAE decoder, resizes ``pos_embed`` to the model's grid).

:func:`load_pretrained` reads ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` files
with :func:`omniseg.utils.weights_io.read_weights_file` (the reader training checkpoints use too;
``torch.load(weights_only=True)``, so nothing is unpickled beyond tensors and plain containers).
It returns a :class:`LoadReport` listing missing, unexpected and shape-mismatched keys, and raises
:class:`CheckpointError` (:mod:`omniseg.utils.weights_io`'s, re-exported here) naming the file
when ``strict``, or when the file fills less than half of the model's tensors (the wrong file:
training on from a mostly random model would only look like fine-tuning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from omniseg.modeling.backbones.vit import resize_pos_embed
from omniseg.utils.atomic import atomic_write_bytes
from omniseg.utils.weights_io import CheckpointError, StateDict, read_weights_file, unwrap_state_dict

logger = logging.getLogger(__name__)

FilterFn = Callable[[StateDict, nn.Module | None], StateDict]


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        path: the checkpoint file.
        loaded: model keys filled from the checkpoint.
        missing: model keys the checkpoint did not provide (left at their initial values).
        unexpected: checkpoint keys (after filtering) the model has no place for.
        mismatched: (key, checkpoint shape, model shape) for keys skipped for their shape.
    """

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, max_keys: int = 10) -> str:
        def show(keys: list) -> str:
            more = f", ... ({len(keys) - max_keys} more)" if len(keys) > max_keys else ""
            return ", ".join(str(k) for k in keys[:max_keys]) + more

        lines = [f"{self.path}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"  missing in checkpoint ({len(self.missing)}): {show(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in checkpoint ({len(self.unexpected)}): {show(self.unexpected)}")
        if self.mismatched:
            items = [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            lines.append(f"  shape mismatch ({len(items)}): {show(items)}")
        return "\n".join(lines)


def _model_prefix(model: nn.Module | None, anchor: str) -> str:
    """The prefix under which ``anchor`` (e.g. "conv1.weight") sits in the model, "" if none."""
    if model is None:
        return ""
    keys = model.state_dict().keys()
    if anchor in keys:
        return ""
    hits = sorted((k[: -len(anchor)] for k in keys if k.endswith("." + anchor)), key=len)
    return hits[0] if hits else ""


def resnet_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> StateDict:
    """Remap a torchvision ResNet checkpoint to :class:`~omniseg.modeling.backbones.resnet.ResNet`.

    Strips ``module.`` prefixes and checkpoint nesting, drops the ImageNet classifier
    (``fc.weight`` / ``fc.bias``). Our names are torchvision's, so nothing else is renamed. When
    ``model`` holds the ResNet under a prefix (e.g. ``bottom_up.`` inside an FPN), the keys get
    that prefix.
    """
    sd = unwrap_state_dict(state_dict)
    sd = {k: v for k, v in sd.items() if not (k == "fc" or k.startswith("fc."))}
    prefix = _model_prefix(model, "conv1.weight")
    return {prefix + k: v for k, v in sd.items()}


# Checkpoint entries that belong to a classifier or to MAE's pixel decoder, not to the encoder.
_VIT_DROP_PREFIXES = ("head.", "head_dist.", "decoder", "mask_token", "fc_norm.", "pre_logits.")


def vit_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> StateDict:
    """Remap a timm / MAE ViT checkpoint to :class:`~omniseg.modeling.backbones.vit.VisionTransformer`.

    Unwraps MAE's ``{"model": ...}`` nesting and ``module.`` prefixes; drops the classifier
    (``head.*``, ``fc_norm.*``, ``pre_logits.*``) and MAE decoder entries (``decoder_*``,
    ``mask_token``); resizes ``pos_embed`` bicubically to the model's patch grid (cls entry
    kept), so an ImageNet-224 checkpoint loads into a model built for another image size.
    """
    sd = unwrap_state_dict(state_dict)
    sd = {k: v for k, v in sd.items() if not k.startswith(_VIT_DROP_PREFIXES)}
    prefix = _model_prefix(model, "cls_token")
    if model is not None and "pos_embed" in sd:
        target = model.state_dict().get(prefix + "pos_embed")
        pos = sd["pos_embed"]
        if (
            target is not None
            and pos.shape != target.shape
            and pos.dim() == 3
            and pos.shape[-1] == target.shape[-1]
        ):
            num_prefix = int(getattr(model, "num_prefix_tokens", 1))
            grid = _square_side(target.shape[1] - num_prefix, "model pos_embed")
            _square_side(pos.shape[1] - num_prefix, "checkpoint pos_embed")
            sd["pos_embed"] = resize_pos_embed(pos, (grid, grid), num_prefix)
    return {prefix + k: v for k, v in sd.items()}


def _square_side(n: int, what: str) -> int:
    side = int(round(n**0.5))
    if side * side != n:
        raise CheckpointError(f"{what} has {n} grid tokens after the cls token, not a square grid")
    return side


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    filter_fn: FilterFn | None = None,
    *,
    strict: bool = False,
    min_loaded: float = 0.5,
) -> LoadReport:
    """Load a foreign checkpoint into ``model``.

    Args:
        model: the module to fill (e.g. a ResNet, an FPN holding one, a VisionTransformer).
        path: ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` file.
        filter_fn: remapping, called as ``filter_fn(state_dict, model)`` (e.g.
            :func:`resnet_filter_fn`, :func:`vit_filter_fn`); None only unwraps nesting and
            ``module.`` prefixes.
        strict: raise :class:`CheckpointError` (naming the file and keys) unless every model key
            is filled and every checkpoint key used with the right shape.
        min_loaded: raise :class:`CheckpointError` when the checkpoint fills fewer than this
            fraction of the model's tensors (nothing is loaded then).

    Returns:
        A :class:`LoadReport`; its summary is logged as a warning when anything did not fit.
    """
    raw = read_weights_file(path)
    try:
        sd = filter_fn(raw, model) if filter_fn is not None else unwrap_state_dict(raw, str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    report = LoadReport(path=str(path))
    own = model.state_dict()
    usable: StateDict = {}
    for key, value in sd.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    loaded = [k for k in own if k in usable]
    if own and len(loaded) < min_loaded * len(own):
        extra = [k for k in usable if k not in own]
        hint = (f"first shape mismatch: {report.mismatched[0][0]} {report.mismatched[0][1]} vs model "
                f"{report.mismatched[0][2]}" if report.mismatched else
                f"first unused checkpoint tensor: {extra[0]}" if extra else
                "the checkpoint has no tensors for this model")
        raise CheckpointError(
            f"{path}: only {len(loaded)} of the model's {len(own)} tensors are in this checkpoint "
            f"(need {min_loaded:.0%}); not weights for this backbone? ({hint})")
    result = model.load_state_dict(usable, strict=False)
    report.missing = list(result.missing_keys) + [k for k, _, _ in report.mismatched]
    report.unexpected = list(result.unexpected_keys)
    missing = set(report.missing)
    report.loaded = [k for k in own if k not in missing]
    if not report.ok:
        if strict:
            raise CheckpointError("checkpoint does not fit the model (strict):\n" + report.summary())
        logger.warning("%s", report.summary())
    return report


def load_resnet_trunk(backbone: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load ResNet weights (torchvision ImageNet, or a trunk ``omniseg pretrain`` exported) into the
    trunk of ``backbone`` (an FPN's ``bottom_up``, or a bare ResNet); the FPN and heads keep their
    initialization. Logs what was loaded, with the pretraining manifest's summary when the file has one
    next to it (``manifest.json``).

    Raises:
        CheckpointError: the file is not weights for this trunk (e.g. another width: shapes differ).
    """
    import json

    trunk = getattr(backbone, "bottom_up", backbone)
    report = load_pretrained(trunk, path, resnet_filter_fn)
    manifest = os.path.join(os.path.dirname(os.fspath(path)), "manifest.json")
    about = ""
    try:
        with open(manifest, encoding="utf-8") as f:
            m = json.load(f)
        about = f" ({m.get('recipe')} on {m.get('data', {}).get('train')}, {m.get('steps')} steps)"
    except (OSError, ValueError, AttributeError):
        pass
    logger.info("%s: loaded %d of the trunk's %d tensors%s", path, len(report.loaded),
                len(trunk.state_dict()), about)
    return report


def convert_to_safetensors(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    filter_fn: FilterFn | None = None,
    model: nn.Module | None = None,
) -> int:
    """Read ``src`` (any supported checkpoint), remap with ``filter_fn`` and write ``dst`` atomically.

    Returns the number of tensors written.
    """
    from safetensors.torch import save

    raw = read_weights_file(src)
    sd = filter_fn(raw, model) if filter_fn is not None else unwrap_state_dict(raw, str(src))
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    atomic_write_bytes(dst, save(sd))
    return len(sd)
