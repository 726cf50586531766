"""Train / validation / test splits held as tensors on the device."""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from robustprune.data.formats import load_raw
from robustprune.data.specs import DEFAULT_DATASET, DatasetSpec, get_spec
from robustprune.errors import ConfigError, RobustPruneWarning


@dataclass
class Split:
    """Images ``x`` (float32 NCHW in [0, 1]) and labels ``y`` (int64), on one device.

    ``index`` (optional) holds each sample's position in the source file's split (train or test),
    so which samples went where can be recorded and checked.
    """

    x: Tensor
    y: Tensor
    index: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def subset(self, n: int) -> Split:
        """The first ``n`` samples (all of them when ``n >= len(self)``)."""
        n = _check_count(n, "subset size")
        idx = self.index[:n] if self.index is not None else None
        return Split(self.x[:n], self.y[:n], idx)

    def to(self, device: torch.device | str) -> Split:
        idx = self.index.to(device) if self.index is not None else None
        return Split(self.x.to(device), self.y.to(device), idx)


def check_split(x: Tensor, y: Tensor, what: str = "data", num_classes: int | None = None) -> None:
    """One-line :class:`ConfigError` unless ``x`` is float NCHW in [0, 1] with finite values and ``y`` holds one
    integer label per image within ``0 .. num_classes - 1`` (when known): what every method trains on."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ConfigError(f"{what}: x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 4:
        raise ConfigError(f"{what}: x must be a float NCHW tensor in [0, 1] (images x channels x height x width), "
                          f"got shape {tuple(x.shape)}; add a channel axis with x.unsqueeze(1) for grey images")
    if not torch.is_floating_point(x):
        hint = " (divide by 255: x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise ConfigError(f"{what}: x must be a float tensor in [0, 1], got {x.dtype}{hint}")
    if y.dim() != 1 or len(y) != len(x):
        raise ConfigError(f"{what}: y must hold one integer label per image ({len(x)}), got shape {tuple(y.shape)}")
    if torch.is_floating_point(y) or y.dtype == torch.bool or torch.is_complex(y):
        if torch.is_floating_point(y) and bool(torch.isfinite(y).all()) and bool((y == y.round()).all()):
            pass  # whole-number float labels are accepted (converted to int64)
        else:
            raise ConfigError(f"{what}: y must hold integer class labels, got {y.dtype}")
    if len(x) == 0:
        raise ConfigError(f"{what}: no images")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise ConfigError(f"{what}: {bad} image(s) hold NaN or infinite values; clean or drop them")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = " (0..255 pixels: divide by 255)" if hi > 1.5 and lo >= 0 else " (normalise inside the model)"
        raise ConfigError(f"{what}: inputs must lie in [0, 1]{hint}, got [{lo:.3g}, {hi:.3g}]")
    ymin, ymax = int(y.min()), int(y.max())
    if ymin < 0 or (num_classes is not None and ymax >= num_classes):
        top = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ConfigError(f"{what}: labels must lie in {top} (the model's {num_classes} outputs), got "
                          f"{ymin}..{ymax}" if num_classes is not None else
                          f"{what}: labels must be >= 0, got {ymin}..{ymax}")


@dataclass
class Splits:
    """A dataset ready to use: the spec, train, validation (carved from train) and test splits."""

    spec: DatasetSpec
    train: Split
    val: Split
    test: Split


def _check_count(n: object, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"{what} must be a non-negative integer, got {n!r}")
    return int(n)


def _say_clamped(what: str, asked: int, have: int, of: str) -> None:
    """A limit above the data's size is clamped to it; say so (once per message: Python's default warning filter)."""
    warnings.warn(f"{what}={asked} is more than the {have} {of}; using all {have}", RobustPruneWarning,
                  stacklevel=3)


def _val_count(val_size: int | float, n_train: int) -> int:
    if isinstance(val_size, bool):
        raise ConfigError(f"val_size must be an int count or a float fraction in (0, 1), got {val_size!r}")
    if isinstance(val_size, (int, np.integer)):
        if not 0 <= val_size < n_train:
            raise ConfigError(
                f"val_size={val_size} out of range: the train set has {n_train} samples; "
                f"use 0..{n_train - 1} or a fraction in (0, 1)"
            )
        return int(val_size)
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 < float(val_size) < 1.0:
            raise ConfigError(
                f"val_size={val_size} out of range: a float is a fraction of the train set and must lie "
                "in (0, 1); give an int for a count"
            )
        n = int(round(float(val_size) * n_train))
        return min(max(n, 1), n_train - 1)
    raise ConfigError(f"val_size must be an int count or a float fraction in (0, 1), got {val_size!r}")


_U8_TO_UNIT = torch.arange(256, dtype=torch.float32) / 255.0
"""Pixel value v -> v / 255 in float32, computed once on the CPU (IEEE division). Every device reads its pixels
from this table, so one seed gives bit-identical images everywhere: CUDA's ``x / 255.0`` multiplies by the rounded
reciprocal instead, which differs from the CPU's division in the last bit for about half of the 256 values."""


def u8_to_unit(x_u8: Tensor, *, chunk: int = 8192) -> Tensor:
    """uint8 images -> float32 in [0, 1], bit-identical on every device (see :data:`_U8_TO_UNIT`)."""
    lut = _U8_TO_UNIT.to(x_u8.device)
    out = torch.empty(x_u8.shape, dtype=torch.float32, device=x_u8.device)
    for i in range(0, len(x_u8), chunk):  # int64 indices in chunks: 8 bytes per pixel only for one chunk
        out[i : i + chunk] = lut[x_u8[i : i + chunk].long()]
    return out


def _to_split(x_u8: Tensor, y: Tensor, idx: Tensor, device: torch.device) -> Split:
    # index the uint8 images on the device first (4x less to move / copy), then scale to [0, 1]
    return Split(u8_to_unit(x_u8[idx]), y[idx], idx)


def _as_tensor(a: np.ndarray, device: torch.device) -> Tensor:
    with warnings.catch_warnings():  # cached arrays are read-only; nothing here writes to them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    return t.to(device)


def load_splits(
    name: str = DEFAULT_DATASET,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int | float = 5000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    train_limit: int | None = None,
    test_limit: int | None = None,
    image_size: int | None = None,
) -> Splits:
    """Load dataset ``name`` from local files into train / val / test splits on ``device``.

    The validation split is carved from the training set with a permutation seeded by ``seed``
    (``val_size``: an int count, or a float fraction in (0, 1)); the rest is the train split, in
    that permuted order. ``train_limit`` / ``test_limit`` keep the first n of train (after the
    permutation) / of test (file order), for quick runs. ``image_size`` resizes image-folder
    datasets (imagenette) to ``image_size`` x ``image_size`` instead of the spec's size.
    Decoded files are cached in-process, so loading the same dataset twice is cheap.
    """
    from robustprune.utils import default_device

    spec = get_spec(name)
    dev = default_device(str(device) if device is not None else None)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    size = spec.image_size
    if image_size is not None:
        s = _check_count(image_size, "image_size")
        if s < 8:
            raise ConfigError(f"image_size={s} is too small; use at least 8")
        if spec.format != "image-folder" and (s, s) != spec.image_size:
            raise ConfigError(f"{spec.name} images are {spec.shape[1]}x{spec.shape[2]} and cannot be resized; "
                              "drop image_size")
        size = (s, s)
        spec = dataclasses.replace(spec, shape=(spec.shape[0], s, s))

    raw = load_raw(spec, data_dir, size)
    n_train = len(raw.y_train)
    n_val = _val_count(val_size, n_train)

    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n_train, generator=g)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_limit is not None:
        limit = _check_count(train_limit, "train_limit")
        if limit > len(train_idx):
            _say_clamped("train_limit", limit, len(train_idx), f"training images of {spec.name} (after the "
                         f"{n_val} validation images)")
        train_idx = train_idx[:limit]
    test_idx = torch.arange(len(raw.y_test))
    if test_limit is not None:
        limit = _check_count(test_limit, "test_limit")
        if limit > len(test_idx):
            _say_clamped("test_limit", limit, len(test_idx), f"test images of {spec.name}")
        test_idx = test_idx[:limit]

    x_tr, y_tr = _as_tensor(raw.x_train, dev), _as_tensor(raw.y_train, dev)
    x_te, y_te = _as_tensor(raw.x_test, dev), _as_tensor(raw.y_test, dev)
    return Splits(
        spec=spec,
        train=_to_split(x_tr, y_tr, train_idx.to(dev), dev),
        val=_to_split(x_tr, y_tr, val_idx.to(dev), dev),
        test=_to_split(x_te, y_te, test_idx.to(dev), dev),
    )
