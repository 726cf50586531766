"""On-device mini-batches and batched, vectorised augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from robustprune.data.splits import Split
from robustprune.errors import ConfigError
from robustprune.registry import Registry

Augment = Callable[..., Tensor]  # augment(x, *, generator=None) -> x'
AUGMENTATIONS: Registry[Augment] = Registry("augmentation")


def _rand_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Random numbers are drawn where the generator lives (then moved), else on ``device``."""
    return generator.device if generator is not None else device


def crop_flip_params(
    n: int, *, padding: int = 4, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample crop offsets ``dy``, ``dx`` in ``[0, 2*padding]`` and flip flags, drawn in that order."""
    dev = torch.device(device)
    rdev = _rand_device(generator, dev)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rdev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rdev)
    flip = torch.randint(0, 2, (n,), generator=generator, device=rdev).bool()
    return dy.to(dev), dx.to(dev), flip.to(dev)


def apply_crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, *, padding: int = 4) -> Tensor:
    """Zero-pad ``x`` by ``padding``, crop each sample at (``dy``, ``dx``), then mirror where ``flip``.

    ``out[n, :, i, j] = pad(x)[n, :, dy[n] + i, dx[n] + (W - 1 - j if flip[n] else j)]``,
    done with two gathers on the device (no loop over samples).
    """
    n, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    rows = dy.view(n, 1) + torch.arange(h, device=x.device)  # (N, H)
    ar = torch.arange(w, device=x.device)
    cols = dx.view(n, 1) + torch.where(flip.view(n, 1), (w - 1) - ar, ar)  # (N, W)
    out = xp.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


@AUGMENTATIONS.register("crop-flip", help="random crop with 4-px zero padding + random horizontal flip")
def crop_flip(x: Tensor, *, generator: torch.Generator | None = None, padding: int = 4) -> Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip (p = 1/2), per sample, batched."""
    if x.ndim != 4:
        raise ValueError(f"crop_flip expects NCHW images, got shape {tuple(x.shape)}")
    dy, dx, flip = crop_flip_params(len(x), padding=padding, generator=generator, device=x.device)
    return apply_crop_flip(x, dy, dx, flip, padding=padding)


def get_augment(augment: str | Augment | None) -> Augment | None:
    """``None``, a registered name (e.g. ``"crop-flip"``) or a callable ``f(x, *, generator=None)``."""
    if augment is None or callable(augment):
        return augment
    return AUGMENTATIONS.get(augment)


class Batches:
    """Mini-batches ``(x, y)`` of a :class:`Split`, on the split's device.

    Each ``iter()`` is one epoch: with ``shuffle`` a fresh permutation is drawn from ``generator``
    (a CPU generator also works for CUDA data: the permutation is drawn on the CPU and moved), so
    a seeded generator makes the whole sequence of epochs reproducible. ``augment`` (``None``,
    ``"crop-flip"`` or a callable) is applied per batch on the device with the same generator.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: str | Augment | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = get_augment(augment)
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.split.x, self.split.y
        n, bs = len(self.split), self.batch_size
        stop = len(self) * bs
        if self.shuffle:
            dev = x.device
            perm = torch.randperm(n, generator=self.generator, device=_rand_device(self.generator, dev)).to(dev)
        for start in range(0, stop, bs):
            if self.shuffle:
                idx = perm[start : start + bs]
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x[start : start + bs], y[start : start + bs]
            if self.augment is not None:
                xb = self.augment(xb, generator=self.generator)
            yield xb, yb
