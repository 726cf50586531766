"""Dataset registry: name -> :class:`DatasetSpec` (shape, classes, mean/std, default budgets, files)."""

from __future__ import annotations

from dataclasses import dataclass

from robustprune.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is (not how it is loaded into memory).

    ``eps_linf`` / ``eps_l2`` are the default attack budgets in [0, 1] pixel units.
    ``augment`` is ``None`` or ``"crop-flip"`` (pad 4 + random crop + horizontal flip).
    ``files`` lists what the loader expects (used in error messages). ``format`` picks the loader
    (``"idx"``, ``"cifar10"``, ``"cifar100"``, ``"svhn"``, ``"image-folder"``); ``subdirs`` are
    sub-folders of the data folder that are also searched (e.g. ``cifar-10-batches-py``);
    ``hint`` says how to get the files.
    """

    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps_linf: float
    eps_l2: float
    augment: str | None
    default_dir: str | None
    files: tuple[str, ...]
    format: str = "idx"
    subdirs: tuple[str, ...] = ()
    hint: str = ""
    description: str = ""
    sizes: tuple[int, int] | None = None
    """(training images, test images) of the official release, for planning before any file is read (None:
    they vary between releases); the loaders count what the files hold."""

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]


DATASETS: Registry[DatasetSpec] = Registry("dataset")

DEFAULT_DATASET = "fashion-mnist"

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` under ``spec.name`` (a name may be registered once)."""
    DATASETS.add(spec.name, spec, help=spec.description or spec.name)
    return spec


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (unknown -> UnknownNameError listing the choices)."""
    return DATASETS.get(name)


def dataset_names() -> list[str]:
    return DATASETS.names()


register_dataset(
    DatasetSpec(
        name="fashion-mnist",
        shape=(1, 28, 28),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        eps_linf=0.1,
        eps_l2=1.5,
        augment=None,
        default_dir="/usr/share/datasets/fashion-mnist",
        files=_IDX_FILES,
        sizes=(60_000, 10_000),
        format="idx",
        subdirs=("fashion-mnist", "FashionMNIST/raw"),
        hint="apt-get install -y dataset-fashion-mnist, or pass --data-dir DIR",
        description="Fashion-MNIST: 28x28 grey clothing images, 10 classes, 60k train / 10k test (IDX files)",
    )
)

register_dataset(
    DatasetSpec(
        name="mnist",
        shape=(1, 28, 28),
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        eps_linf=0.3,
        eps_l2=2.0,
        augment=None,
        default_dir=None,
        files=_IDX_FILES,
        sizes=(60_000, 10_000),
        format="idx",
        subdirs=("mnist", "MNIST/raw"),
        hint="download the MNIST IDX files (http://yann.lecun.com/exdb/mnist/) and pass --data-dir DIR",
        description="MNIST: 28x28 grey handwritten digits, 10 classes, 60k train / 10k test (IDX files)",
    )
)

register_dataset(
    DatasetSpec(
        name="cifar10",
        shape=(3, 32, 32),
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        eps_linf=8 / 255,
        eps_l2=0.5,
        augment="crop-flip",
        default_dir=None,
        files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        sizes=(50_000, 10_000),
        format="cifar10",
        subdirs=("cifar-10-batches-py",),
        hint="run `robustprune data fetch cifar10` (downloads and verifies it) and pass the --data-dir it prints, "
        "or unpack cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and pass --data-dir DIR",
        description="CIFAR-10: 32x32 colour images, 10 classes, 50k train / 10k test (python pickle batches)",
    )
)

register_dataset(
    DatasetSpec(
        name="cifar100",
        shape=(3, 32, 32),
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        eps_linf=8 / 255,
        eps_l2=0.5,
        augment="crop-flip",
        default_dir=None,
        files=("train", "test"),
        sizes=(50_000, 10_000),
        format="cifar100",
        subdirs=("cifar-100-python",),
        hint="run `robustprune data fetch cifar100` (downloads and verifies it) and pass the --data-dir it prints, "
        "or unpack cifar-100-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and pass --data-dir DIR",
        description="CIFAR-100: 32x32 colour images, 100 fine classes, 50k train / 10k test (python pickles)",
    )
)

register_dataset(
    DatasetSpec(
        name="svhn",
        shape=(3, 32, 32),
        num_classes=10,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        eps_linf=8 / 255,
        eps_l2=0.5,
        augment=None,  # horizontal flips change digits
        default_dir=None,
        files=("train_32x32.mat", "test_32x32.mat"),
        sizes=(73_257, 26_032),
        format="svhn",
        subdirs=("svhn", "SVHN"),
        hint="run `robustprune data fetch svhn` (downloads and verifies it) and pass the --data-dir it prints, or "
        "download train_32x32.mat and test_32x32.mat (http://ufldl.stanford.edu/housenumbers/) and pass --data-dir DIR",
        description="SVHN (cropped digits): 32x32 colour house numbers, 10 classes, 73k train / 26k test (.mat)",
    )
)

register_dataset(
    DatasetSpec(
        name="imagenette",
        shape=(3, 64, 64),
        num_classes=10,
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        eps_linf=4 / 255,  # RobustBench's ImageNet L-inf budget
        eps_l2=1.0,  # CIFAR's 0.5 scaled by sqrt(#pixels): 64x64 has 4x the pixels of 32x32
        augment="crop-flip",
        default_dir=None,
        files=("train/<wnid>/*.JPEG", "val/<wnid>/*.JPEG"),
        format="image-folder",
        subdirs=("imagenette2-160", "imagenette2-320", "imagenette2", "imagenette"),
        hint="unpack imagenette2-160.tgz (https://github.com/fastai/imagenette) and pass --data-dir DIR",
        description="Imagenette: 10 easy ImageNet classes, resized to 64x64 (image folders train/ and val/)",
    )
)
