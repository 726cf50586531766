"""Shared fixtures: small deterministic models and data; the real Fashion-MNIST when installed."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("ROBUSTPRUNE_DEVICE", "cpu")
torch.set_num_threads(min(2, torch.get_num_threads()))

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fmnist_available() -> bool:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    return True


def blobs(n: int = 512, seed: int = 0, classes: int = 3, shape=(1, 6, 6), sep: float = 0.35):
    """Linearly separable images in [0, 1]: class k brightens one band of pixels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.5 + 0.05 * torch.randn((n, *shape), generator=g)
    band = shape[-1] // classes
    for k in range(classes):
        x[y == k, :, :, k * band:(k + 1) * band] += sep
    return x.clamp(0, 1), y


class TinyConvNet(nn.Sequential):
    def __init__(self, classes: int = 3, in_ch: int = 1, size: int = 6) -> None:
        from robustprune.models import Normalize

        super().__init__(
            Normalize((0.5,) * in_ch, (0.25,) * in_ch),
            nn.Conv2d(in_ch, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * size * size, 16),
            nn.ReLU(),
            nn.Linear(16, classes),
        )


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyConvNet()


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is ~10x faster than two on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_blobs_model(*, classes: int, size: int, n_train: int, n_test: int, epochs: int):
    """A TinyConvNet trained with Adam on ``classes``-class blobs (size x size), and ``n_test`` other test points."""
    import torch.nn.functional as F

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    x, y = blobs(n=n_train, seed=0, classes=classes, shape=(1, size, size), sep=0.25)
    xt, yt = blobs(n=n_test, seed=1, classes=classes, shape=(1, size, size), sep=0.25)
    torch.manual_seed(0)
    model = TinyConvNet(classes=classes, size=size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    torch.set_num_threads(n)
    return model, xt, yt


class LinearModel(nn.Module):
    """Logits ``x.flatten(1) @ w.T + b``: the nearest adversarial point is known in closed form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.w.t() + self.b


def run_main(*args: str) -> int:
    """Run ``robustprune ARGS`` in-process without fixtures (for module-scoped set-up); its exit status."""
    import sys

    from robustprune.cli.main import main

    argv = sys.argv
    sys.argv = ["robustprune", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    return 0 if exc.value.code is None else exc.value.code


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``robustprune ARGS`` in-process through the real entry point; (exit status, stdout, stderr)."""
    import sys

    from robustprune.cli.main import main

    monkeypatch.setattr(sys, "argv", ["robustprune", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    code = exc.value.code
    return (0 if code is None else code), out, err


MNIST_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_learnable_mnist(folder, n_train: int = 400, n_test: int = 60):
    """MNIST-format IDX files in ``folder``: 28x28 images, learnable (class k brightens columns 2k..2k+2)."""
    import numpy as np

    from robustprune.data import write_idx

    rng = np.random.default_rng(0)
    y, yt = rng.integers(0, 10, n_train).astype(np.uint8), rng.integers(0, 10, n_test).astype(np.uint8)
    x = rng.integers(0, 60, (n_train, 28, 28)).astype(np.uint8)
    xt = rng.integers(0, 60, (n_test, 28, 28)).astype(np.uint8)
    for k in range(10):
        x[y == k, :, 2 * k:2 * k + 3] += 150
        xt[yt == k, :, 2 * k:2 * k + 3] += 150
    for name, a in zip(MNIST_IDX, (x, y, xt, yt)):
        write_idx(folder / name, a)
    return folder


# ------------------------------------------------------------------------------------------ work tripwire
class WorkStarted(AssertionError):
    """Raised by the tripwire: work began (a training step, an attack's input gradient, a batch, a file written)."""


@pytest.fixture
def work_tripwire(monkeypatch) -> list[str]:
    """:func:`install_work_tripwire` for one test; the list of what tripped."""
    return install_work_tripwire(monkeypatch)


def install_work_tripwire(monkeypatch) -> list[str]:
    """One tripwire at the level all work passes through, whatever entry point or name binding led there: the
    training loop (``train.loop._fit``, behind every ``fit``), the attack loop (``torch.autograd.grad``: every
    attack's input gradient), the data loader (``Batches.__iter__``: every mini-batch of training and evaluation),
    the checkpoint writer (``checkpoint._atomic_write_bytes``), the export writer (``deploy.export._write_artifact``)
    and the report writer (its figures, drawn once the database was read). Returns the list of what tripped (a study stores a cell's exception as a failed cell, so
    the list, not only the exception, is the evidence)."""
    import importlib

    import robustprune.checkpoint as checkpoint
    import robustprune.data.batches as batches
    import torch

    deploy_export = importlib.import_module("robustprune.deploy.export")  # the package's `export` is the function
    loop = importlib.import_module("robustprune.train.loop")

    tripped: list[str] = []

    def wire(what: str):
        def boom(*a, **k):
            tripped.append(what)
            raise WorkStarted(f"work started: {what}")
        return boom

    monkeypatch.setattr(loop, "_fit", wire("training loop"))
    monkeypatch.setattr(torch.autograd, "grad", wire("attack loop (input gradient)"))
    monkeypatch.setattr(batches.Batches, "__iter__", wire("data loader (mini-batches)"))
    monkeypatch.setattr(checkpoint, "_atomic_write_bytes", wire("checkpoint writer"))
    monkeypatch.setattr(deploy_export, "_write_artifact", wire("export writer"))
    report = importlib.import_module("robustprune.study.report")
    monkeypatch.setattr(report, "robust_vs_compression_png", wire("report writer (figures)"))
    return tripped


# The README's own model as a user's module file (`--model usernets.mynet:MyNet`).
README_NET = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class MyNet(nn.Module):                       # the README's own model: float NCHW inputs in [0, 1], logits
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 16, 5), nn.Conv2d(16, 32, 5)
            self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 128), nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(torch.relu(self.conv1((x - 0.286) / 0.353)), 2)
            x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))
''')
