"""Shared pieces of the model zoo: the registry, input normalisation and small helpers.

Every model built here is a :class:`Net` (an ``nn.Sequential``) whose first child, ``normalize``,
is a :class:`Normalize`; the network therefore takes pixels in ``[0, 1]`` and every ε is in pixel
units. Children are named (``features``, ``pool``, ``flatten``, ``classifier`` for plain nets;
``stem``, ``layer1`` …, ``fc`` for residual nets) so pruning code can refer to layers by module name,
e.g. ``features.0`` or ``layer2.0.conv1``. ReLUs are separate, *not in-place* modules so that forward
hooks see each layer's output unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustprune.errors import ConfigError
from robustprune.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with ``mean`` and ``std`` as buffers shaped ``(1, C, 1, 1)``.

    Buffers travel with ``.to(device)`` and are saved in the state dict, so a checkpoint carries its
    own normalisation.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(tuple(float(m) for m in mean), dtype=torch.float32)
        std_t = torch.as_tensor(tuple(float(s) for s in std), dtype=torch.float32)
        if mean_t.ndim != 1 or std_t.ndim != 1 or mean_t.numel() == 0:
            raise ConfigError("Normalize needs mean and std as non-empty sequences of floats")
        if mean_t.numel() != std_t.numel():
            raise ConfigError(
                f"Normalize got {mean_t.numel()} means but {std_t.numel()} stds; give one per channel"
            )
        if not bool(torch.all(std_t > 0)):
            raise ConfigError(f"Normalize std must be > 0, got {tuple(std_t.tolist())}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        m = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        s = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={m}, std={s}"


class Net(nn.Sequential):
    """A model: ``normalize`` first, then named stages; ``forward`` returns logits ``(N, classes)``."""

    def __init__(self, normalize: Normalize, parts: "OrderedDict[str, nn.Module]") -> None:
        if "normalize" in parts:
            raise ValueError("'normalize' is reserved for the first module")
        super().__init__(OrderedDict([("normalize", normalize), *parts.items()]))


def scaled(channels: float, width: float) -> int:
    """``int(round(channels * width))``, at least 1."""
    return max(1, int(round(channels * width)))


def as_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """An ``int`` or ``(H, W)`` -> ``(H, W)`` of positive ints (``ConfigError`` otherwise)."""
    if isinstance(input_size, int | float) and not isinstance(input_size, bool):
        if int(input_size) != input_size:
            raise ConfigError(f"input_size must be a whole number, got {input_size!r}")
        hw = (int(input_size), int(input_size))
    else:
        try:
            hw_list = [int(v) for v in input_size]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ConfigError(
                f"input_size must be an int or (H, W), got {input_size!r}"
            ) from None
        if len(hw_list) != 2:
            raise ConfigError(f"input_size must be an int or (H, W), got {input_size!r}")
        hw = (hw_list[0], hw_list[1])
    if min(hw) < 1:
        raise ConfigError(f"input_size must be positive, got {input_size!r}")
    return hw


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution / pooling along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def require_size(name: str, hw: tuple[int, int], out_hw: tuple[int, int], minimum: int) -> None:
    """Raise ``ConfigError`` when the feature map after the conv stack would be empty."""
    if min(out_hw) < 1:
        raise ConfigError(
            f"model {name!r} needs inputs of at least {minimum}x{minimum} pixels, got "
            f"{hw[0]}x{hw[1]}; use a larger input_size or another architecture"
        )


def broadcast_stats(values: Sequence[float] | float, channels: int, what: str) -> tuple[float, ...]:
    """One value per channel: a single value is repeated; any other length must equal ``channels``."""
    if isinstance(values, int | float):
        vals: tuple[float, ...] = (float(values),)
    else:
        vals = tuple(float(v) for v in values)
    if len(vals) == 1:
        return vals * channels
    if len(vals) != channels:
        raise ConfigError(
            f"{what} has {len(vals)} values but the model has {channels} input channels; "
            f"give one value or one per channel"
        )
    return vals


def init_resnet_(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0, Linear bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
