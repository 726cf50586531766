"""Datasets: a registry of specs (shape, classes, mean/std, default ε), loaders from local files
(IDX, CIFAR pickles read with a restricted unpickler, SVHN .mat, image folders), a seeded
train/validation split, and on-device mini-batches with vectorised augmentation.

>>> from robustprune.data import load_splits, Batches
>>> s = load_splits("fashion-mnist", val_size=5000, seed=0)          # doctest: +SKIP
>>> for x, y in Batches(s.train, 128, generator=g): ...             # doctest: +SKIP
"""

from robustprune.data.batches import (
    AUGMENTATIONS,
    Batches,
    apply_crop_flip,
    crop_flip,
    crop_flip_params,
    get_augment,
)
from robustprune.data.formats import (
    RawData,
    RestrictedUnpickler,
    clear_cache,
    load_raw,
    parse_idx,
    read_cifar_batch,
    read_idx,
    resolve_folder,
    safe_unpickle,
    write_idx,
)
from robustprune.data.specs import (
    DATASETS,
    DEFAULT_DATASET,
    DatasetSpec,
    dataset_names,
    get_spec,
    register_dataset,
)
from robustprune.data.splits import Split, Splits, check_split, load_splits

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DEFAULT_DATASET",
    "Batches",
    "DatasetSpec",
    "RawData",
    "RestrictedUnpickler",
    "Split",
    "Splits",
    "apply_crop_flip",
    "clear_cache",
    "crop_flip",
    "crop_flip_params",
    "dataset_names",
    "get_augment",
    "get_spec",
    "load_raw",
    "check_split",
    "load_splits",
    "parse_idx",
    "read_cifar_batch",
    "read_idx",
    "register_dataset",
    "resolve_folder",
    "safe_unpickle",
    "write_idx",
]
