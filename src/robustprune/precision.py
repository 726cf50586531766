"""Numerical precision of training and evaluation.

``precision`` of a training phase (``TrainConfig.precision``, ``--precision``, a study's ``precision:``):

* ``auto`` (the default): ``tf32`` on CUDA (PyTorch's own default for cuDNN convolutions, extended to matmuls;
  measured on an H200: 3.7x the speed of strict fp32 for PGD-AT of ResNet-18), ``fp32`` on the CPU. What it
  resolved to is what is recorded.
* ``fp32``: IEEE float32 everywhere; TF32 is switched **off** for CUDA matmuls and cuDNN convolutions while the
  phase runs (PyTorch's default leaves TF32 on for cuDNN convolutions, which makes a CUDA run differ from a CPU
  run in the fourth digit). The default, and what the CPU always computes.
* ``tf32``: float32 storage, TF32 tensor-core math for CUDA matmuls and convolutions (about 10 mantissa bits).
  On the CPU it computes as ``fp32``, and is recorded as such.
* ``bf16``: automatic mixed precision (``torch.autocast`` with bfloat16) for the forward passes of training,
  the attacks that make its adversarial examples included; weights, optimiser state and gradients stay float32
  (no loss scaling needed with bfloat16). Convolutional models train in ``channels_last`` memory layout on CUDA.

Evaluation (the attacks that measure robustness, validation selection, the equivalence checks of slim models)
runs in strict fp32 with TF32 off by default (:func:`evaluation_precision`), so a reported robust accuracy does
not depend on the chip nor on the precision the model was trained in.

The TF32 switches are set through PyTorch's per-backend ``fp32_precision`` API where it exists (torch >= 2.9;
mixing it with the legacy ``allow_tf32`` flags is an error there), else through ``allow_tf32``; every context
manager here restores the switches it found.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from robustprune.errors import ConfigError

Precision = Literal["auto", "fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "tf32", "bf16")
EvalPrecision = Literal["fp32", "tf32"]
EVAL_PRECISIONS: tuple[str, ...] = ("fp32", "tf32")



def check_precision(precision: object, *, what: str = "precision", choices: tuple[str, ...] = PRECISIONS) -> str:
    """``precision`` as one of ``choices``, else a one-line :class:`ConfigError`."""
    if not isinstance(precision, str) or precision.strip().lower() not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {precision!r}")
    return precision.strip().lower()


def _device_type(device: torch.device | str | None) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def effective_precision(precision: str, device: torch.device | str | None) -> str:
    """What the device really computes in (never ``auto``): ``auto`` is ``tf32`` on CUDA and ``fp32`` elsewhere;
    ``tf32`` is a CUDA feature (``fp32`` elsewhere)."""
    p = check_precision(precision)
    cuda = _device_type(device) == "cuda"
    if p == "auto":
        return "tf32" if cuda else "fp32"
    if p == "tf32" and not cuda:
        return "fp32"
    return p


# ------------------------------------------------------------------------------------------- TF32 switches
def _new_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def tf32_state() -> dict[str, object]:
    """The current TF32 switches (to restore them later)."""
    if _new_api():
        return {"matmul": torch.backends.cuda.matmul.fp32_precision,
                "conv": torch.backends.cudnn.conv.fp32_precision,
                "rnn": torch.backends.cudnn.rnn.fp32_precision}
    return {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}


def _set_tf32_state(state: dict[str, object]) -> None:
    if _new_api():
        torch.backends.cuda.matmul.fp32_precision = state["matmul"]
        torch.backends.cudnn.conv.fp32_precision = state["conv"]
        torch.backends.cudnn.rnn.fp32_precision = state["rnn"]
    else:
        torch.backends.cuda.matmul.allow_tf32 = bool(state["matmul"])
        torch.backends.cudnn.allow_tf32 = bool(state["cudnn"])


def tf32_enabled() -> dict[str, bool]:
    """Whether CUDA matmuls / cuDNN convolutions may use TF32 now (``{"matmul": ..., "conv": ...}``)."""
    s = tf32_state()
    if _new_api():
        # "none" inherits: matmul defaults to IEEE, cuDNN convolutions to TF32 (PyTorch's defaults)
        return {"matmul": s["matmul"] == "tf32", "conv": s["conv"] in ("tf32", "none")}
    return {"matmul": bool(s["matmul"]), "conv": bool(s["cudnn"])}


@contextlib.contextmanager
def allow_tf32(allowed: bool) -> Iterator[None]:
    """TF32 on (``True``) or off for CUDA matmuls and cuDNN convolutions inside the block; restored after."""
    saved = tf32_state()
    if _new_api():
        v = "tf32" if allowed else "ieee"
        _set_tf32_state({"matmul": v, "conv": v, "rnn": v})
    else:
        _set_tf32_state({"matmul": allowed, "cudnn": allowed})
    try:
        yield
    finally:
        _set_tf32_state(saved)


# ------------------------------------------------------------------------------------------- contexts
def autocast(precision: str, device: torch.device | str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bfloat16 for ``bf16`` on ``device``'s type; a no-op context otherwise."""
    if check_precision(precision) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device_type(device), dtype=torch.bfloat16)


def training_math(precision: str) -> contextlib.AbstractContextManager:
    """The TF32 switches of a training phase (``precision`` as resolved by :func:`effective_precision`): off for
    ``fp32``, on for ``tf32`` and ``bf16`` (whatever autocast leaves in float32 may use TF32 there)."""
    p = check_precision(precision)
    if p == "auto":
        raise ValueError("resolve 'auto' with effective_precision(precision, device) first")
    return allow_tf32(p != "fp32")


def evaluation_precision(precision: str = "fp32") -> contextlib.AbstractContextManager:
    """The math of a measurement: strict IEEE fp32 (TF32 off) by default; ``tf32`` allows TF32."""
    p = check_precision(precision, what="evaluation precision", choices=EVAL_PRECISIONS)
    return allow_tf32(p == "tf32")


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(model: nn.Module, precision: str, device: torch.device | str | None,
                      channels_last: bool | None = None) -> bool:
    """Whether a training phase keeps ``model`` in ``channels_last``: as asked, or by default for ``bf16`` on
    CUDA for convolutional models (tensor-core convolutions want NHWC). Elsewhere the study measures it per
    architecture (:func:`faster_layout`); on this project's 2-core CPU it helps LeNet-5-Caffe and ResNet-18, not
    VGG-16."""
    if channels_last is not None:
        return bool(channels_last) and is_convolutional(model)
    return check_precision(precision) == "bf16" and _device_type(device) == "cuda" and is_convolutional(model)


def faster_layout(model: nn.Module, x: torch.Tensor, *, reps: int = 5, margin: float = 1.1) -> tuple[bool, float]:
    """(use channels_last, its speed-up) for ``model`` on a batch ``x`` on this device, measured: the best of
    ``reps`` forward + input-gradient backward passes in each layout (after a warm-up), channels_last only when
    it is at least ``margin`` times faster. A non-convolutional model, a non-image batch or a model that fails in
    channels_last keeps NCHW. The model is returned in the default layout, its weights untouched.

    Why measured: on a CPU the answer depends on the model (2 cores here: LeNet-5-Caffe 1.7x faster attack steps
    and 1.35x faster training steps in channels_last, ResNet-18 1.2x, VGG-16 0.9x)."""
    import time

    if x.dim() != 4 or not is_convolutional(model):
        return False, 1.0
    was_training = model.training
    model.eval()

    def once(cl: bool) -> float:
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        xr = (in_layout(x, True) if cl else x.contiguous()).detach().requires_grad_(True)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        with torch.enable_grad():
            torch.autograd.grad(m(xr).float().logsumexp(-1).sum(), xr)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - t0

    try:
        for cl_ in (False, True, False, True):  # warm-up: the first passes of a process pay for kernel selection
            once(cl_)
        nchw, cl = float("inf"), float("inf")
        for _ in range(reps):  # alternating, so that a slow moment of the machine costs both layouts
            nchw = min(nchw, once(False))
            cl = min(cl, once(True))
    except RuntimeError:  # e.g. a .view() of a channels_last activation in a custom forward
        return False, 1.0
    finally:
        to_contiguous(model)
        model.train(was_training)
    speedup = nchw / cl if cl > 0 else 1.0
    return speedup >= margin, speedup


def in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image batch in the model's memory layout: channels_last when asked (a 4-d batch only), else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def to_contiguous(model: nn.Module) -> nn.Module:
    """Back to the default (NCHW-contiguous) layout: what checkpoints (safetensors) and exports expect."""
    return model.to(memory_format=torch.contiguous_format)

