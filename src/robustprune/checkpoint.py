"""Checkpoints: weights (and masks) in safetensors + a JSON sidecar. Loading never unpickles.

``model.safetensors`` holds the state dict and ``mask.<module>`` boolean tensors; ``model.json`` beside it holds
what is needed to rebuild the model (architecture, dataset, width, classes, input shape), the masks' names, the
config that made it and its metrics.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.errors import CheckpointError
from robustprune.sparsity import MaskSet

FORMAT = "robustprune-checkpoint/1"
_MASK_PREFIX = "mask."


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


def save_checkpoint(path: str | Path, model: nn.Module, *, meta: dict[str, Any], masks: MaskSet | None = None) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically. ``meta`` must carry ``architecture``,
    ``num_classes``, ``input_shape`` (C, H, W), and usually ``dataset``, ``width``, ``mean``, ``std``."""
    from safetensors.torch import save

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
    _atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT}))
    _atomic_write_bytes(sidecar_path(path), json.dumps(side, indent=2, sort_keys=True, default=str).encode())
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint (``path`` may be the .safetensors or the .json)."""
    side = sidecar_path(path)
    if not side.exists():
        raise CheckpointError(f"checkpoint sidecar {side} not found; a checkpoint is a .safetensors file with a .json beside it")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {side} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{side} is not a robustprune checkpoint sidecar (format {FORMAT!r} expected)")
    return meta


def build_model_from_meta(meta: dict[str, Any]) -> nn.Module:
    from robustprune.models import create_model

    c, h, _w = meta["input_shape"]
    return create_model(
        meta["architecture"],
        num_classes=int(meta["num_classes"]),
        in_channels=int(c),
        input_size=int(h),
        width=float(meta.get("width", 1.0)),
        mean=tuple(meta.get("mean", (0.0,) * int(c))),
        std=tuple(meta.get("std", (1.0,) * int(c))),
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], MaskSet | None]:
    """Rebuild the model from the sidecar and load its weights and masks (safetensors: no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass the .safetensors file written by `robustprune train` or `prune`")
    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({exc}); re-create it") from None
    mask_state = {k[len(_MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(_MASK_PREFIX)}
    model = build_model_from_meta(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not match architecture {meta['architecture']!r}: {first}") from None
    model.to(device).eval()
    masks = MaskSet.from_state_dict(mask_state).to(device) if mask_state else None
    return model, meta, masks
