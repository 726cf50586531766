"""Tests for robustprune.data: registry, file formats, splits, batches, augmentation."""

from __future__ import annotations

import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustprune.data import (
    AUGMENTATIONS,
    DATASETS,
    Batches,
    DatasetSpec,
    Split,
    apply_crop_flip,
    crop_flip,
    crop_flip_params,
    dataset_names,
    get_spec,
    load_raw,
    load_splits,
    parse_idx,
    read_idx,
    safe_unpickle,
    write_idx,
)
from robustprune.errors import ConfigError, DataError, UnknownNameError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists() and not (FMNIST_DIR / "train-images-idx3-ubyte").exists(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


# ------------------------------------------------------------------------------------------- registry


def test_registry_names_and_default():
    assert set(dataset_names()) >= {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "imagenette"}
    assert get_spec("Fashion-MNIST") is get_spec("fashion-mnist")
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        get_spec("no-such-set")
    with pytest.raises(UnknownNameError):
        load_splits("no-such-set")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_spec_is_consistent(name):
    s = get_spec(name)
    assert isinstance(s, DatasetSpec) and s.name == name
    c, h, w = s.shape
    assert len(s.mean) == len(s.std) == c
    assert all(0 < m < 1 for m in s.mean) and all(0 < v < 1 for v in s.std)
    assert 0 < s.eps_linf < 1 and s.eps_l2 > 0
    assert s.augment is None or s.augment in AUGMENTATIONS
    assert s.files and s.num_classes >= 2
    assert DATASETS.describe(name)


def test_published_constants():
    fm, mn, c10 = get_spec("fashion-mnist"), get_spec("mnist"), get_spec("cifar10")
    assert (fm.eps_linf, fm.eps_l2, fm.mean, fm.std) == (0.1, 1.5, (0.2860,), (0.3530,))
    assert fm.default_dir == str(FMNIST_DIR)
    assert (mn.eps_linf, mn.eps_l2, mn.default_dir) == (0.3, 2.0, None)
    assert c10.eps_linf == 8 / 255 and c10.augment == "crop-flip" and get_spec("cifar100").num_classes == 100
    assert get_spec("svhn").augment is None  # flipping digits changes them
    assert get_spec("imagenette").shape == (3, 64, 64)


# ------------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist():
    return load_splits("fashion-mnist", val_size=5000, seed=0)


@needs_fmnist
def test_fashion_mnist_loads(fmnist):
    s = fmnist
    assert s.spec is get_spec("fashion-mnist")
    assert (len(s.train), len(s.val), len(s.test)) == (55000, 5000, 10000)
    for sp in (s.train, s.val, s.test):
        assert sp.x.shape[1:] == (1, 28, 28) and sp.x.dtype == torch.float32 and sp.y.dtype == torch.int64
        assert sp.x.device.type == "cpu" and sp.y.device.type == "cpu"
        assert float(sp.x.min()) >= 0.0 and float(sp.x.max()) <= 1.0
    assert float(s.train.x.max()) == 1.0  # scaled by 255, not by the max of a batch
    q = s.val.x * 255  # values are exactly k/255
    assert torch.allclose(q, q.round(), atol=1e-4)
    counts = torch.bincount(torch.cat([s.train.y, s.val.y]), minlength=10)
    assert counts.tolist() == [6000] * 10
    assert torch.bincount(s.test.y, minlength=10).tolist() == [1000] * 10


@needs_fmnist
def test_fashion_mnist_train_val_partition_the_train_file(fmnist):
    s = fmnist
    tr, va = s.train.index, s.val.index
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(60000))
    # the rows really are the file's rows at those indices (images and labels)
    raw = load_raw(s.spec)
    for sp in (s.train, s.val):
        x = torch.from_numpy(np.array(raw.x_train))[sp.index].float() / 255
        assert torch.equal(sp.x, x)
        assert torch.equal(sp.y, torch.from_numpy(np.array(raw.y_train))[sp.index])
    # and as a multiset of (image, label) rows, train + val == the whole train file
    def rows(x, y):  # each (image, label) as one opaque byte string, sorted
        u8 = (x * 255).round().to(torch.uint8).reshape(len(x), -1)
        r = np.ascontiguousarray(torch.cat([u8, y.to(torch.uint8)[:, None]], 1).numpy())
        return np.sort(r.view(np.dtype((np.void, r.shape[1]))).ravel())

    full = rows(torch.from_numpy(np.array(raw.x_train)).float() / 255, torch.from_numpy(np.array(raw.y_train)))
    assert np.array_equal(rows(torch.cat([s.train.x, s.val.x]), torch.cat([s.train.y, s.val.y])), full)


@needs_fmnist
def test_fashion_mnist_split_seeding_and_limits(fmnist):
    same = load_splits("fashion-mnist", seed=0, train_limit=100, test_limit=50)
    other = load_splits("fashion-mnist", seed=1, train_limit=100, test_limit=50)
    assert torch.equal(same.val.index, fmnist.val.index)  # same seed -> same split
    assert torch.equal(same.train.index, fmnist.train.index[:100])  # limit = first n after the permutation
    assert not torch.equal(other.val.index, fmnist.val.index)  # other seed -> other split
    assert (len(same.train), len(same.test)) == (100, 50)
    assert torch.equal(same.test.x, fmnist.test.x[:50])  # test keeps file order
    frac = load_splits("fashion-mnist", val_size=0.1, train_limit=10, test_limit=10)
    assert len(frac.val) == 6000


@needs_fmnist
@pytest.mark.parametrize("bad", [-1, 60000, 10**6, 0.0, 1.0, 1.5, -0.2, True, "5000", None])
def test_val_size_out_of_range(bad):
    with pytest.raises(ConfigError, match="val_size"):
        load_splits("fashion-mnist", val_size=bad)


# --------------------------------------------------------------------------------------- IDX format


def _mini_idx_dataset(folder: Path, gz: bool, n_train=12, n_test=5, size=28, seed=0):
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        rng.integers(0, 10, n_train).astype(np.uint8),
        rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.uint8),
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in zip(IDX_NAMES, arrays):
        write_idx(folder / (name + (".gz" if gz else "")), a)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, gz, dtype):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    if dtype == np.uint8:
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    p = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a)
    if gz:
        assert p.read_bytes()[:2] == b"\x1f\x8b"
    b = read_idx(p)
    assert b.dtype == a.dtype and b.dtype.isnative and np.array_equal(a, b)


def test_idx_parse_hand_built_bytes():
    # magic 0x00000C02: int32, 2 dims (2, 2), big-endian data
    blob = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + struct.pack(">4i", 1, -2, 300, 70000)
    assert parse_idx(blob).tolist() == [[1, -2], [300, 70000]]
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes([9, 0, 4])
    assert parse_idx(labels).tolist() == [9, 0, 4]


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_loads_from_data_dir(tmp_path, gz):
    xtr, ytr, xte, yte = _mini_idx_dataset(tmp_path / "MNIST" / "raw", gz)  # torchvision layout is found
    s = load_splits("mnist", data_dir=tmp_path, val_size=4, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 4, 5)
    assert torch.equal(s.test.x, torch.from_numpy(xte).float().unsqueeze(1) / 255)
    assert torch.equal(s.test.y, torch.from_numpy(yte).long())
    assert torch.equal(s.val.x, torch.from_numpy(xtr[s.val.index.numpy()]).float().unsqueeze(1) / 255)
    assert torch.equal(s.train.y, torch.from_numpy(ytr[s.train.index.numpy()]).long())


def test_idx_cache_is_keyed_on_mtime(tmp_path):
    p = write_idx(tmp_path / "a.idx", np.zeros(4, dtype=np.uint8))
    first = read_idx(p)
    assert read_idx(p) is first  # cached
    st = p.stat()
    write_idx(p, np.ones(4, dtype=np.uint8))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert read_idx(p).tolist() == [1, 1, 1, 1]
    assert not first.flags.writeable  # cached arrays cannot be changed behind the cache's back


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda b: b"\x08\x03\x00\x00" + b[4:], "magic"),  # bad magic
        (lambda b: b[: len(b) - 10], "truncated"),  # truncated data
        (lambda b: b[:6], "truncated"),  # truncated header
        (lambda b: b + b"\x00" * 3, "longer"),  # wrong count
    ],
)
def test_corrupt_idx_raises_data_error_naming_the_file(tmp_path, corrupt, match):
    _mini_idx_dataset(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(corrupt(p.read_bytes()))
    with pytest.raises(DataError, match=match) as e:
        load_splits("mnist", data_dir=tmp_path, val_size=2)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_corrupt_gzip_and_mismatched_counts(tmp_path):
    _mini_idx_dataset(tmp_path, gz=True)
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-12])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_splits("mnist", data_dir=tmp_path, val_size=2)
    write_idx(p, np.zeros(4, dtype=np.uint8))  # 5 test images, 4 labels
    with pytest.raises(DataError, match="5 images but .*4 labels"):
        load_splits("mnist", data_dir=tmp_path, val_size=2)
    write_idx(p, np.full(5, 10, dtype=np.uint8))  # label out of range
    with pytest.raises(DataError, match="labels outside"):
        load_splits("mnist", data_dir=tmp_path, val_size=2)


def test_wrong_image_size_is_data_error(tmp_path):
    _mini_idx_dataset(tmp_path, gz=False, size=27)
    with pytest.raises(DataError, match="28x28"):
        load_splits("mnist", data_dir=tmp_path, val_size=2)


def test_missing_files_message(tmp_path):
    with pytest.raises(DataError) as e:
        load_splits("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "\n" not in msg
    assert all(name in msg for name in IDX_NAMES)
    assert "--data-dir" in msg and "apt-get install -y dataset-fashion-mnist" in msg
    # a folder with one file missing names that file
    _mini_idx_dataset(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing in .*: t10k-images-idx3-ubyte\[\.gz\]"):
        load_splits("mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match="no default data folder; pass --data-dir"):
        load_splits("mnist")


# ------------------------------------------------------------------------------------ CIFAR pickles


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 ``str`` opcodes and NumPy's globals under their NumPy-1 names,
    as in the real CIFAR files (pickled by Python 2's cPickle)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _write_pickle(path: Path, obj, style: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "py2":
        with open(path, "wb") as f:
            _Py2Pickler(f, protocol=2).dump(obj)
    else:
        obj = {k.decode(): v for k, v in obj.items()}  # Python-3 pickles have str keys
        path.write_bytes(pickle.dumps(obj, protocol=4))


def _cifar_batch(rng, n, label_key=b"labels", n_classes=10):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    d = {
        b"batch_label": b"synthetic batch",
        b"data": data,
        label_key: [int(v) for v in rng.integers(0, n_classes, n)],
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [int(v) % 20 for v in d[label_key]]
    return d


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_loader_on_synthetic_batches(tmp_path, style):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    batches = [_cifar_batch(rng, 4) for _ in range(5)]
    for i, b in enumerate(batches, 1):
        _write_pickle(folder / f"data_batch_{i}", b, style)
    test = _cifar_batch(rng, 3)
    _write_pickle(folder / "test_batch", test, style)

    s = load_splits("cifar10", data_dir=tmp_path, val_size=5, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 3)
    assert s.train.x.shape[1:] == (3, 32, 32) and s.spec.shape == (3, 32, 32)
    all_data = np.concatenate([b[b"data"] for b in batches])
    all_y = np.concatenate([b[b"labels"] for b in batches])
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    k = int(s.val.index[0])
    assert torch.equal(s.val.x[0, 1, 2, 3] * 255, torch.tensor(float(all_data[k, 1024 + 2 * 32 + 3])))
    assert torch.equal(s.train.x, torch.from_numpy(all_data[s.train.index.numpy()].reshape(-1, 3, 32, 32)) / 255)
    assert torch.equal(s.train.y, torch.from_numpy(all_y[s.train.index.numpy()]))
    assert torch.equal(s.test.y, torch.tensor(test[b"labels"]))


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    train = _cifar_batch(rng, 6, b"fine_labels", 100)
    test = _cifar_batch(rng, 2, b"fine_labels", 100)
    _write_pickle(tmp_path / "train", train, "py2")  # folder itself (no cifar-100-python/ level)
    _write_pickle(tmp_path / "test", test, "py2")
    s = load_splits("cifar100", data_dir=tmp_path, val_size=1)
    assert torch.equal(torch.sort(torch.cat([s.train.y, s.val.y])).values, torch.tensor(sorted(train[b"fine_labels"])))
    assert s.test.y.tolist() == test[b"fine_labels"]


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize(
    "payload",
    [
        "os.system",
        b"cbuiltins\neval\n(S'__import__(\"os\").system(\"touch MARKER\")'\ntR.",
        b"cnumpy\nload\n(S'MARKER'\ntR.",  # a numpy global outside the allow-list
        b"csubprocess\ncall\n((S'touch'\nS'MARKER'\nltR.",
    ],
)
def test_malicious_pickle_is_refused(tmp_path, payload):
    marker = tmp_path / "MARKER"
    if payload == "os.system":
        blob = pickle.dumps({"data": _Evil(f"touch {marker}")})
    else:
        blob = payload.replace(b"MARKER", str(marker).encode())
    p = tmp_path / "data_batch_1"
    p.write_bytes(blob)
    with pytest.raises(DataError, match="refused") as e:
        safe_unpickle(p)
    assert str(p) in str(e.value)
    assert not marker.exists()


def test_malicious_cifar_batch_is_refused_by_the_loader(tmp_path):
    marker = tmp_path / "MARKER"
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_pickle(tmp_path / f"data_batch_{i}", _cifar_batch(rng, 2), "py2")
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(f"touch {marker}")}, protocol=2))
    with pytest.raises(DataError, match="test_batch was refused"):
        load_splits("cifar10", data_dir=tmp_path, val_size=1)
    assert not marker.exists()


def test_corrupt_cifar_batch(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _write_pickle(tmp_path / f"data_batch_{i}", _cifar_batch(rng, 2), "py2")
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(U\x04data")  # cut short
    with pytest.raises(DataError, match="test_batch is not a readable pickle"):
        load_splits("cifar10", data_dir=tmp_path, val_size=1)
    _write_pickle(tmp_path / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)}, "py2")
    with pytest.raises(DataError, match="no 'labels' entry"):
        load_splits("cifar10", data_dir=tmp_path, val_size=1)


# ------------------------------------------------------------------------------- SVHN / Imagenette


def test_svhn_loader_on_synthetic_mat(tmp_path):
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    xs = {}
    for name, n in (("train_32x32.mat", 6), ("test_32x32.mat", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [4], [5]][:n], dtype=np.uint8)
        sio.savemat(tmp_path / name, {"X": x, "y": y})
        xs[name] = x
    s = load_splits("svhn", data_dir=tmp_path, val_size=2)
    assert s.test.y.tolist() == [0, 1, 2]  # label 10 is the digit 0
    assert torch.equal(s.test.x[1, 2, 5, 7] * 255, torch.tensor(float(xs["test_32x32.mat"][5, 7, 2, 1])))


def test_svhn_without_scipy_names_the_extra(tmp_path, monkeypatch):
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DataError, match=r"robustprune\[svhn\]") as exc:
        load_splits("svhn", data_dir=tmp_path)
    assert 'pip install -e ".[svhn]"' in str(exc.value)  # the command that works from a clone, too


def _imagenette(tmp_path: Path, n_train=2, n_val=1):
    from PIL import Image

    root = tmp_path / "imagenette2-160"
    colours = {}
    for c in range(10):
        wnid = f"n0{c:07d}"
        colours[c] = (25 * c, 255 - 20 * c, 100)
        for split, n in (("train", n_train), ("val", n_val)):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 3 * i, 30), colours[c]).save(d / f"{wnid}_{i}.JPEG", quality=95)
    return colours


def test_imagenette_loader_on_synthetic_folders(tmp_path):
    pytest.importorskip("PIL")
    colours = _imagenette(tmp_path)
    s = load_splits("imagenette", data_dir=tmp_path, val_size=4, image_size=16)
    assert s.spec.shape == (3, 16, 16) and s.train.x.shape[1:] == (3, 16, 16)
    assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 10)
    assert sorted(s.test.y.tolist()) == list(range(10))
    assert len(set(s.test.y[:5].tolist())) > 1  # stored in a fixed mixed order, so prefixes mix classes
    for x, y in zip(s.test.x, s.test.y):
        want = torch.tensor(colours[int(y)], dtype=torch.float32).view(3, 1, 1) / 255
        assert (x - want).abs().max() < 4 / 255
    assert load_splits("imagenette", data_dir=tmp_path, val_size=4, test_limit=2).test.x.shape == (2, 3, 64, 64)


def test_imagenette_without_pillow_names_the_extra(tmp_path, monkeypatch):
    for split in ("train", "val"):
        (tmp_path / split / "n01").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"robustprune\[imagenette\]") as exc:
        load_splits("imagenette", data_dir=tmp_path)
    assert 'pip install -e ".[imagenette]"' in str(exc.value)


# ---------------------------------------------------------------------------------------- crop-flip


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_crop_flip_shape_and_determinism():
    x = torch.rand(64, 3, 12, 10, generator=_gen(0))
    a = crop_flip(x, generator=_gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, crop_flip(x, generator=_gen(1)))
    assert not torch.equal(a, crop_flip(x, generator=_gen(2)))
    assert torch.equal(a, AUGMENTATIONS.get("crop-flip")(x, generator=_gen(1)))


def test_crop_flip_param_distribution():
    dy, dx, flip = crop_flip_params(20000, generator=_gen(0))
    for d in (dy, dx):
        assert d.min() == 0 and d.max() == 8
        assert torch.bincount(d, minlength=9).min() > 20000 / 9 * 0.85
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    again = crop_flip_params(20000, generator=_gen(0))
    assert all(torch.equal(u, v) for u, v in zip((dy, dx, flip), again))


def test_crop_flip_is_a_true_shift_of_the_padded_image():
    n, c, h, w, p = 16, 2, 6, 5, 4
    x = torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)  # all pixels distinct, non-zero
    out = crop_flip(x, generator=_gen(7))
    dy, dx, flip = crop_flip_params(n, generator=_gen(7))
    assert flip.any() and (~flip).any() and (dy != p).any()
    for k in range(n):
        padded = torch.zeros(c, h + 2 * p, w + 2 * p)
        padded[:, p : p + h, p : p + w] = x[k]
        want = padded[:, dy[k] : dy[k] + h, dx[k] : dx[k] + w]
        if flip[k]:
            want = want.flip(-1)
        assert torch.equal(out[k], want), k


def test_apply_crop_flip_known_offsets():
    x = torch.arange(1, 1 + 4 * 4, dtype=torch.float32).view(1, 1, 4, 4).repeat(3, 1, 1, 1)
    dy, dx = torch.tensor([4, 0, 4]), torch.tensor([4, 4, 5])
    out = apply_crop_flip(x, dy, dx, torch.tensor([False, False, True]))
    assert torch.equal(out[0], x[0])  # centre crop = identity
    assert torch.equal(out[1], F.pad(x[1], (0, 0, 4, 0))[:, :4])  # shifted down 4 rows
    shifted = torch.cat([x[2, :, :, 1:], torch.zeros(1, 4, 1)], dim=2)  # left by one, then mirrored
    assert torch.equal(out[2], shifted.flip(-1))


# ------------------------------------------------------------------------------------------ Batches


def _toy_split(n=103):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return Split(x, torch.arange(n))


def test_batches_cover_each_sample_once_per_epoch():
    split = _toy_split()
    b = Batches(split, 10, generator=_gen(0))
    assert len(b) == 11
    epochs = []
    for _ in range(2):
        ys = []
        for xb, yb in b:
            assert torch.equal(xb[:, 0, 0, 0].long(), yb)  # images and labels stay paired
            ys.append(yb)
        assert [len(y) for y in ys] == [10] * 10 + [3]
        y = torch.cat(ys)
        assert torch.equal(torch.sort(y).values, torch.arange(103))
        assert not torch.equal(y, torch.arange(103))
        epochs.append(y)
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch
    again = Batches(split, 10, generator=_gen(0))
    assert torch.equal(torch.cat([y for _, y in again]), epochs[0])  # reproducible from the seed


def test_batches_drop_last_no_shuffle_and_augment():
    split = _toy_split()
    b = Batches(split, 10, drop_last=True, generator=_gen(1))
    ys = torch.cat([y for _, y in b])
    assert len(b) == 10 and len(ys) == 100 and len(set(ys.tolist())) == 100
    ordered = torch.cat([y for _, y in Batches(split, 25, shuffle=False)])
    assert torch.equal(ordered, torch.arange(103))
    aug = list(Batches(split, 50, augment="crop-flip", generator=_gen(2)))
    assert [x.shape for x, _ in aug] == [(50, 1, 4, 4), (50, 1, 4, 4), (3, 1, 4, 4)]
    assert any((x == 0).any() for x, _ in aug[:1])  # some padding came in
    assert len(Batches(Split(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)), 4)) == 0


def test_batches_bad_arguments():
    split = _toy_split(5)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            Batches(split, bad)
    with pytest.raises(UnknownNameError, match="crop-flip"):
        Batches(split, 2, augment="rotate")


def test_split_subset():
    split = _toy_split(10)
    sub = split.subset(4)
    assert len(sub) == 4 and torch.equal(sub.y, torch.arange(4))
    assert len(split.subset(100)) == 10
    with pytest.raises(ConfigError):
        split.subset(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_data_with_cpu_generator(tmp_path):
    _mini_idx_dataset(tmp_path, gz=False)
    s = load_splits("mnist", data_dir=tmp_path, val_size=2, device="cuda")
    assert s.train.x.is_cuda and s.train.y.is_cuda and s.test.x.is_cuda
    cpu = load_splits("mnist", data_dir=tmp_path, val_size=2)
    assert torch.equal(s.train.x.cpu(), cpu.train.x)  # same split on any device
    on_gpu = [(x, y) for x, y in Batches(s.train, 4, augment="crop-flip", generator=_gen(0))]
    on_cpu = [(x, y) for x, y in Batches(cpu.train, 4, augment="crop-flip", generator=_gen(0))]
    assert all(x.is_cuda for x, _ in on_gpu)
    for (xg, yg), (xc, yc) in zip(on_gpu, on_cpu):
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


def test_pixels_scale_to_the_ieee_quotient_on_every_device():
    """Images are v / 255 by IEEE division for all 256 values, read from one table made on the CPU. CUDA computes
    ``x / 255.0`` as ``x * (1 / 255)`` (one rounding more), which differs in the last bit for about half the values:
    that is why a seed gave other images on a GPU than on the CPU."""
    from robustprune.data.splits import u8_to_unit

    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    exact = torch.arange(256, dtype=torch.float64).div(255).to(torch.float32).view(1, 1, 16, 16)
    assert torch.equal(u8_to_unit(v), exact)
    by_reciprocal = v.to(torch.float32) * torch.tensor(1 / 255, dtype=torch.float32)
    assert 50 < int((by_reciprocal != exact).sum()) < 256  # the CUDA path this table replaces
    assert torch.equal(u8_to_unit(v.repeat(20000, 1, 1, 1), chunk=4096), exact.repeat(20000, 1, 1, 1))


def test_fit_draws_its_batches_from_a_cpu_generator_of_their_own():
    """The batches ``fit`` trains on depend only on the seed (a CPU generator of their own), not on what the
    objective draws in between nor on the device: the same sequence as ``Batches`` with ``make_generator(seed)``."""
    from torch import nn

    from robustprune.train import TrainConfig, fit
    from robustprune.utils import make_generator

    x = torch.rand(40, 1, 8, 8, generator=_gen(3))
    y = torch.arange(40) % 2
    split = Split(x, y)
    seen: list[torch.Tensor] = []

    class Recorder:
        def __call__(self, model, xb, yb, *, generator=None):
            from robustprune.objectives.base import ObjectiveOutput

            seen.append(xb.clone())
            torch.rand(7, generator=generator)  # the objective's own draws must not shift the data order
            out = model(xb)
            return ObjectiveOutput(nn.functional.cross_entropy(out, yb), out)

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    fit(model, Recorder(), split, None, TrainConfig(epochs=2, batch_size=8, seed=5, progress=False, select="last"),
        augment="crop-flip")
    want = []
    batches = Batches(split, 8, shuffle=True, augment="crop-flip", generator=make_generator(5, "cpu"), drop_last=True)
    for _ in range(2):
        want += [xb for xb, _ in batches]
    assert len(seen) == len(want) == 10
    assert all(torch.equal(a, b) for a, b in zip(seen, want))
