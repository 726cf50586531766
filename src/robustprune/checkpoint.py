"""Checkpoints: weights (and masks) in safetensors + a JSON sidecar. Loading never unpickles.

``model.safetensors`` holds the state dict and ``mask.<module>`` boolean tensors; ``model.json`` beside it holds
what is needed to rebuild the model (architecture, dataset, width, classes, input shape; for a slim model the
shapes of its layers), the masks' names, the sha256 of the safetensors file, the config that made it and its
metrics.

Loading checks everything a user could trip over and refuses with a one-line :class:`CheckpointError`: a sidecar
that does not follow the schema (:class:`Sidecar`, naming the field), a payload changed after saving (sha256), a
mask shaped unlike its layer's weight, non-finite weights, a weight that is non-zero where its mask prunes it, a
state that does not fit the architecture or the given model. It then re-applies the masks, which also zeroes the
bias and BatchNorm terms of fully pruned units (:mod:`robustprune.sparsity.units`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from robustprune.errors import CheckpointError, RobustPruneError
from robustprune.sparsity import MaskSet

FORMAT = "robustprune-checkpoint/1"
_MASK_PREFIX = "mask."


class LayerShape(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    weight: list[int]
    bias: bool = True


class Sidecar(BaseModel):
    """The schema of the JSON sidecar (other keys -- config, metrics, provenance -- are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    format: Literal["robustprune-checkpoint/1"]
    architecture: str = Field(min_length=1)
    num_classes: int = Field(gt=0)
    input_shape: tuple[int, int, int]
    width: float = Field(default=1.0, gt=0)
    mean: list[float] | None = None
    std: list[float] | None = None
    dataset: str | None = None
    masks: list[str] = Field(default_factory=list)
    weights_file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    slim: bool = False
    layer_shapes: dict[str, LayerShape] | None = None


def _schema_error(where: str, exc: ValidationError) -> CheckpointError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or "?"
    if err.get("type") == "missing":
        what = "is missing"
    else:
        what = f"{err.get('msg', 'is invalid')} (got {err.get('input')!r})"
    return CheckpointError(f"{where}: field {field!r} {what}; fix the sidecar or re-create the checkpoint")


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkpoint_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a checkpoint's safetensors file: its content hash, as stored in the sidecar."""
    path = _weights_path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(path: str | Path, expected: str | None = None) -> str:
    """Check that the safetensors file still has the content hash ``expected`` (default: the sidecar's
    ``sha256``); returns the hash, raises :class:`CheckpointError` when it differs."""
    path = _weights_path(path)
    if expected is None:
        expected = read_meta(path).get("sha256")
        if expected is None:
            raise CheckpointError(f"checkpoint {path} was saved without a content hash; re-save it to verify it")
    got = checkpoint_sha256(path)
    if got != expected:
        raise CheckpointError(
            f"checkpoint {path} was changed after it was saved (sha256 {got[:12]}... != {str(expected)[:12]}...); "
            "re-create it"
        )
    return got


def _weights_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix(".safetensors") if path.suffix == ".json" else path


def save_checkpoint(path: str | Path, model: nn.Module, *, meta: dict[str, Any], masks: MaskSet | None = None) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically. ``meta`` must carry ``architecture``,
    ``num_classes``, ``input_shape`` (C, H, W), and usually ``dataset``, ``width``, ``mean``, ``std``. The sidecar
    also gets the mask names, the file's ``sha256`` and, for a slim model (``model.rp_slim``, set by
    :func:`robustprune.sparsity.slim_model`, or ``meta["slim"]``), its ``layer_shapes``."""
    from safetensors.torch import save

    from robustprune.sparsity.slim import layer_shapes

    path = Path(path)
    missing = [k for k in ("architecture", "num_classes", "input_shape") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    mask_names: list[str] = []
    if masks is not None:
        for name, m in masks.state_dict().items():
            tensors[_MASK_PREFIX + name] = m.detach().to("cpu").bool().contiguous()
            mask_names.append(name)
    side = dict(meta)
    side["format"] = FORMAT
    side["masks"] = mask_names
    side["weights_file"] = path.name
    if bool(side.get("slim", getattr(model, "rp_slim", False))):
        side["slim"] = True
        side["layer_shapes"] = layer_shapes(model)
    payload = save(tensors, metadata={"format": FORMAT})
    side["sha256"] = sha256_bytes(payload)
    try:
        Sidecar.model_validate(json.loads(json.dumps(side, default=str)))
    except ValidationError as exc:
        raise _schema_error(f"checkpoint meta for {path}", exc) from None
    _atomic_write_bytes(path, payload)
    _atomic_write_bytes(sidecar_path(path), json.dumps(side, indent=2, sort_keys=True, default=str).encode())
    return path


def _refuse_folder(path: Path) -> None:
    if path.is_dir():
        inside = sorted(path.glob("*.safetensors"))[:3]
        hint = f" (it holds {', '.join(f.name for f in inside)})" if inside else ""
        raise CheckpointError(f"checkpoint {path} is a folder{hint}; pass a .safetensors file written by "
                              "`robustprune train` or `prune`")


def checkpoint_dataset(meta: dict[str, Any], path: str | Path) -> str:
    """The dataset a checkpoint's sidecar names, or a one-line error naming the sidecar when it names none."""
    ds = meta.get("dataset")
    if not ds:
        raise CheckpointError(f"checkpoint {path}: its sidecar {sidecar_path(path)} names no dataset (dataset: "
                              f"{json.dumps(ds)}); set \"dataset\" there to the dataset the model was trained on (see "
                              "`robustprune list datasets`)")
    return str(ds)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint (``path`` may be the .safetensors or the .json), validated against
    :class:`Sidecar`: a missing or mistyped field is a one-line :class:`CheckpointError` naming it."""
    _refuse_folder(Path(path))
    side = sidecar_path(path)
    if not side.exists():
        what = f"checkpoint {path}: its sidecar {side.name}" if Path(path).suffix != ".json" else \
            f"checkpoint sidecar {side}"
        raise CheckpointError(f"{what} not found; a checkpoint is a .safetensors file with a .json beside it "
                              "(written by `robustprune train`, `prune` or `import`)")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {side} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{side} is not a robustprune checkpoint sidecar (format {FORMAT!r} expected)")
    try:
        valid = Sidecar.model_validate(meta)
    except ValidationError as exc:
        raise _schema_error(f"checkpoint sidecar {side}", exc) from None
    out = dict(meta)
    out.update(num_classes=valid.num_classes, input_shape=list(valid.input_shape), width=valid.width)
    return out


def build_model_from_meta(meta: dict[str, Any]) -> nn.Module:
    from robustprune.models import create_model

    c, h, _w = meta["input_shape"]
    try:
        return create_model(
            meta["architecture"],
            num_classes=int(meta["num_classes"]),
            in_channels=int(c),
            input_size=int(h),
            width=float(meta.get("width", 1.0)),
            mean=tuple(meta.get("mean") or (0.0,) * int(c)),
            std=tuple(meta.get("std") or (1.0,) * int(c)),
        )
    except RobustPruneError as exc:
        raise CheckpointError(
            f"cannot build architecture {meta['architecture']!r} ({exc}); for your own model pass "
            "load_checkpoint(path, model=YourNet()) (CLI: --model package.module:factory)"
        ) from None


def _check_state(path: Path, model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """One-line error when ``state`` does not fit ``model`` (missing / unexpected keys, shapes)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        raise CheckpointError(f"checkpoint {path} does not match {what}: {'; '.join(parts)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"checkpoint {path} does not match {what}: {k!r} has shape {tuple(state[k].shape)} "
                                  f"in the checkpoint but {tuple(v.shape)} in the model")


def _check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(
                f"checkpoint {path} has non-finite values in {k!r} ({bad} NaN/inf of {v.numel()}); the model "
                "diverged in training: retrain it (e.g. with a lower learning rate)"
            )


def _check_mask_names(path: Path, meta: dict[str, Any], mask_state: dict[str, torch.Tensor]) -> None:
    """The masks the sidecar names are the masks the file holds: a named mask the file lacks would leave that layer
    unmasked while every report says it is pruned; a mask the sidecar does not name was added or the sidecar edited."""
    named = [str(n) for n in meta.get("masks") or []]
    missing = [n for n in named if n not in mask_state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path}: its sidecar {sidecar_path(path).name} names a mask for {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + " that the file does not hold; the sidecar was edited or belongs to another file: re-create the "
              "checkpoint")
    extra = sorted(n for n in mask_state if n not in set(named))
    if extra:
        raise CheckpointError(
            f"checkpoint {path} holds a mask for {extra[0]!r} that its sidecar {sidecar_path(path).name} does not "
            "name (masks: [...]); the sidecar was edited or belongs to another file: re-create the checkpoint")


def _check_masks(path: Path, model: nn.Module, masks: MaskSet) -> None:
    mods = dict(model.named_modules())
    for name, m in masks.masks.items():
        w = getattr(mods.get(name), "weight", None)
        if not isinstance(w, torch.Tensor):
            raise CheckpointError(f"checkpoint {path} has a mask for {name!r}, which is not a layer with weights of "
                                  "the model; re-create the checkpoint")
        if tuple(w.shape) != tuple(m.shape):
            raise CheckpointError(f"checkpoint {path}: the mask of {name!r} has shape {tuple(m.shape)} but the "
                                  f"layer's weight has {tuple(w.shape)}; re-create the checkpoint")
        alive = int(((w.detach() != 0) & ~m.to(w.device)).sum())
        if alive:
            raise CheckpointError(
                f"checkpoint {path}: {alive} weights of {name!r} are non-zero where its mask prunes them (the "
                "weights were changed after pruning, or the masks belong to another model); re-create it"
            )


def load_checkpoint(
    path: str | Path,
    device: str | torch.device | None = None,
    model: nn.Module | None = None,
    *,
    verify: bool = True,
) -> tuple[nn.Module, dict[str, Any], MaskSet | None]:
    """Load the weights and masks of a checkpoint (safetensors: no pickle) into a model, in eval mode on ``device``
    (default CPU), and return ``(model, meta, masks)``.

    ``model``: the user's own instance to fill (any ``nn.Module``; a mismatch is a one-line error naming the
    first differing tensor); default: the registry architecture named in the sidecar. A slim checkpoint
    (``slim: true``) is rebuilt from its ``layer_shapes`` either way. ``verify``: check the content hash stored in
    the sidecar. The masks are re-applied after checking that the weights they prune are zero."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from robustprune.sparsity.slim import rebuild_layers

    path = _weights_path(path)
    _refuse_folder(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass the .safetensors file written by `robustprune train` or `prune`")
    meta = read_meta(path)
    try:
        data = path.read_bytes()
        tensors = load_bytes(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({exc}); re-create it") from None
    if verify and meta.get("sha256") and sha256_bytes(data) != meta["sha256"]:
        raise CheckpointError(
            f"checkpoint {path} was changed after it was saved (its sha256 differs from the sidecar's); re-create it"
        )
    mask_state = {k[len(_MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(_MASK_PREFIX)}
    _check_mask_names(path, meta, mask_state)
    _check_finite(path, state)
    if model is None:
        model = build_model_from_meta(meta)
        what = f"architecture {meta['architecture']!r}"
    else:
        if not isinstance(model, nn.Module):
            raise CheckpointError(f"model= must be an nn.Module instance, got {type(model).__name__}")
        what = f"the given {type(model).__name__}"
    if meta.get("slim") and meta.get("layer_shapes"):
        rebuild_layers(model, meta["layer_shapes"])
    _check_state(path, model, state, what)
    model.load_state_dict(state, strict=True)
    model.to(device if device is not None else "cpu").eval()
    masks = None
    if mask_state:
        masks = MaskSet.from_state_dict(mask_state).to(next((p.device for p in model.parameters()), "cpu"))
        _check_masks(path, model, masks)
        params = dict(model.named_parameters())
        changed = sum(int(((params[p].detach() != 0) & ~m).sum()) for p, m in masks.unit_masks(model).items()
                      if p in params)
        masks.apply(model)
        if changed:
            meta["units_zeroed_on_load"] = changed
            warnings.warn(
                f"{path}: {changed} bias/BatchNorm values of fully pruned units were non-zero (saved before pruned "
                "units were removed entirely); they are now zero, so this model differs from its stored metrics",
                stacklevel=2,
            )
    return model, meta, masks
