"""``create_model`` / ``model_for_dataset``: validated construction of registered architectures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import nn

# Importing the architecture modules registers them in MODELS.
from robustprune.models import convnets as _convnets  # noqa: F401
from robustprune.models import resnets as _resnets  # noqa: F401
from robustprune.models import imagenet_resnets as _imagenet_resnets  # noqa: F401
from robustprune.models import deepmind as _deepmind  # noqa: F401
from robustprune.models.base import MODELS, as_hw, broadcast_stats
from robustprune.errors import ConfigError


class _SpecLike(Protocol):
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    return MODELS.names()


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | Sequence[int] = 28,
    width: float = 1.0,
    mean: Sequence[float] | float = (0.0,),
    std: Sequence[float] | float = (1.0,),
) -> nn.Module:
    """Build architecture ``name`` for ``in_channels`` x ``input_size`` inputs in [0, 1].

    ``input_size`` is an int (square) or ``(H, W)``. ``mean``/``std`` give one value per channel, or
    one value for all. ``width`` scales channel counts (for the ``-w`` nets it is the paper's factor
    w). The returned model is an ``nn.Sequential`` whose first module is ``Normalize``; it returns
    logits ``(N, num_classes)``. Its ``arch_config`` attribute holds the arguments that rebuild it.

    Raises ``UnknownNameError`` for an unknown name, ``ConfigError`` for bad arguments.
    """
    builder = MODELS.get(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive int, got {in_channels!r}")
    try:
        width_f = float(width)
    except (TypeError, ValueError):
        raise ConfigError(f"width must be a positive number, got {width!r}") from None
    if not width_f > 0 or width_f == float("inf"):
        raise ConfigError(f"width must be a positive number, got {width!r}")
    hw = as_hw(input_size)
    mean_t = broadcast_stats(mean, in_channels, "mean")
    std_t = broadcast_stats(std, in_channels, "std")
    size: Any = hw[0] if hw[0] == hw[1] else hw
    model = builder(
        num_classes=num_classes, in_channels=in_channels, input_size=size, width=width_f,
        mean=mean_t, std=std_t,
    )
    model.arch_config = {
        "name": name.lower(),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": size if isinstance(size, int) else list(size),
        "width": width_f,
        "mean": list(mean_t),
        "std": list(std_t),
    }
    return model


def model_for_dataset(name: str, spec: _SpecLike, width: float = 1.0) -> nn.Module:
    """``create_model`` with shape, classes and normalisation taken from a ``DatasetSpec``."""
    c, h, w = spec.shape
    return create_model(
        name,
        num_classes=spec.num_classes,
        in_channels=c,
        input_size=h if h == w else (h, w),
        width=width,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
    )
