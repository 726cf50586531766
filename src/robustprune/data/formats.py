"""Readers for the on-disk formats: IDX (MNIST-like), CIFAR python pickles, SVHN .mat, image folders.

Every reader returns uint8 images NCHW and int64 labels as NumPy arrays (read-only: they are cached
in-process keyed by path + modification time + size, so a second load in the same process is free).
Pickles are read with :class:`RestrictedUnpickler`, which can build nothing but plain containers and
NumPy arrays: a file that asks for any other global (``os.system``, ``builtins.eval``, ...) is refused.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from robustprune.data.specs import DatasetSpec
from robustprune.errors import DataError
from robustprune.utils import install_hint


class RawData(NamedTuple):
    """Decoded arrays of one dataset: images uint8 (N, C, H, W), labels int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------------------------- IDX

_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES: dict[str, int] = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file's permissions") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt gzip file {path} ({e}); download it again") from None
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (big-endian header: 0, 0, dtype code, ndim, ndim x uint32 dims)."""
    if len(data) < 4:
        raise DataError(f"{name} is not an IDX file (only {len(data)} bytes); download it again")
    zero1, zero2, code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{name} is not an IDX file (bad magic number 0x{data[:4].hex()}); "
            "download it again or pass --data-dir DIR with the right files"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated (IDX header cut short); download it again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    have = len(data) - header
    if have != expected:
        what = "truncated" if have < expected else "longer than its header says"
        raise DataError(
            f"{name} is {what}: header says shape {tuple(dims)} ({expected} bytes of data) but the file "
            f"holds {have}; download it again"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    if dtype.byteorder not in ("=", "|"):
        arr = arr.astype(dtype.newbyteorder("="))
    return _readonly(arr)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return parse_idx(_read_bytes(Path(path)), name=path)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a plain or gzipped IDX file into a read-only array (cached on path + mtime + size)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"IDX file {p} not found; pass --data-dir DIR with the dataset's files")
    return _read_idx_cached(*_stat_key(p))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``). Inverse of :func:`read_idx`."""
    a = np.asarray(array)
    key = a.dtype.str[1:]
    if key not in _IDX_CODES or a.ndim == 0 or a.ndim > 255:
        raise ValueError(f"IDX cannot hold a {a.ndim}-d {a.dtype} array")
    header = bytes([0, 0, _IDX_CODES[key], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    blob = header + a.astype(a.dtype.newbyteorder(">"), copy=False).tobytes()
    p = Path(path)
    p.write_bytes(gzip.compress(blob, compresslevel=1) if p.name.endswith(".gz") else blob)
    return p


def _find_idx(folder: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


# ------------------------------------------------------------------------------------------ pickles


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that :class:`RestrictedUnpickler` does not allow."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only dicts, lists, tuples, bytes, str, numbers and NumPy arrays.

    The only globals it resolves are the three NumPy needs to rebuild an array
    (``_reconstruct``, ``ndarray``, ``dtype``); anything else raises :class:`UnsafePickleError`.
    """

    def find_class(self, module: str, name: str) -> Any:
        getter = _ALLOWED_GLOBALS.get((module, name))
        if getter is None:
            raise UnsafePickleError(f"refusing to load global {module}.{name}")
        return getter()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a persistent id")


def safe_unpickle(path: str | os.PathLike[str]) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler` (``encoding="bytes"``, for Python-2 pickles)."""
    p = Path(path)
    data = _read_bytes(p)
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as e:
        raise DataError(
            f"{p} was refused: {e} (a dataset pickle holds only arrays, lists and strings; the file may be "
            "malicious or not the dataset's file); download it again from the official source"
        ) from None
    except Exception as e:  # any parse failure of a corrupt pickle
        raise DataError(f"{p} is not a readable pickle ({type(e).__name__}: {e}); download it again") from None


def _get(d: Any, key: str, path: Path) -> Any:
    if isinstance(d, dict):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
    raise DataError(f"{path} has no {key!r} entry; it is not a CIFAR python batch, download it again")


def read_cifar_batch(path: str | os.PathLike[str], label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,)), safely unpickled."""
    p = Path(path)
    d = safe_unpickle(p)
    data = _get(d, "data", p)
    labels = _get(d, label_key, p)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dt = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{p}: 'data' should be a uint8 array of shape (N, 3072), got {dt} {shape}; "
                        "download it again")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{p}: {label_key!r} is not a list of integers; download it again") from None
    if y.ndim != 1 or len(y) != len(data):
        raise DataError(f"{p}: {len(data)} images but {y.size} labels; download it again")
    return data.reshape(-1, 3, 32, 32), y


# ----------------------------------------------------------------------------------------- formats


def _check_labels(y: np.ndarray, spec: DatasetSpec, name: str) -> None:
    if y.size and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
        raise DataError(
            f"{name}: labels outside 0..{spec.num_classes - 1} (found {int(y.min())}..{int(y.max())}); "
            f"is this really {spec.name}? download it again"
        )


class _Format:
    """How one on-disk layout is found and decoded."""

    def expected(self, spec: DatasetSpec) -> str:
        return ", ".join(spec.files)

    def missing(self, folder: Path, spec: DatasetSpec) -> list[str]:
        return [f for f in spec.files if not (folder / f).is_file()]

    def signature(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> tuple:
        return tuple(_stat_key(folder / f) for f in spec.files)

    def load(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> RawData:
        raise NotImplementedError


class _IdxFormat(_Format):
    def expected(self, spec: DatasetSpec) -> str:
        return ", ".join(f"{f}[.gz]" for f in spec.files)

    def missing(self, folder: Path, spec: DatasetSpec) -> list[str]:
        return [f"{f}[.gz]" for f in spec.files if _find_idx(folder, f) is None]

    def signature(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> tuple:
        return tuple(_stat_key(_find_idx(folder, f)) for f in spec.files)  # type: ignore[arg-type]

    def load(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> RawData:
        tr_x, tr_y, te_x, te_y = (_find_idx(folder, f) for f in spec.files)
        out = []
        for xp, yp in ((tr_x, tr_y), (te_x, te_y)):
            x = read_idx(xp)
            y = read_idx(yp)
            if x.ndim != 3 or x.dtype != np.uint8 or x.shape[1:] != tuple(spec.shape[1:]):
                raise DataError(
                    f"{xp}: expected uint8 images of {spec.shape[1]}x{spec.shape[2]}, got {x.dtype} "
                    f"{x.shape}; pass --data-dir DIR with the {spec.name} files"
                )
            if y.ndim != 1:
                raise DataError(f"{yp}: expected a 1-d label file, got shape {y.shape}; download it again")
            if len(x) != len(y):
                raise DataError(f"{xp} holds {len(x)} images but {yp} holds {len(y)} labels; download them again")
            y = y.astype(np.int64)
            _check_labels(y, spec, str(yp))
            out += [x[:, None], _readonly(y)]
        return RawData(*out)


class _CifarFormat(_Format):
    def __init__(self, label_key: str) -> None:
        self.label_key = label_key

    def load(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> RawData:
        parts = [(f, read_cifar_batch(folder / f, self.label_key)) for f in spec.files]
        for f, (_, y) in parts:
            _check_labels(y, spec, str(folder / f))
        train, test = parts[:-1], parts[-1][1]
        x_tr = np.concatenate([x for _, (x, _) in train]) if len(train) > 1 else train[0][1][0]
        y_tr = np.concatenate([y for _, (_, y) in train]) if len(train) > 1 else train[0][1][1]
        return RawData(_readonly(x_tr), _readonly(y_tr), _readonly(test[0]), _readonly(test[1]))


_SCIPY_MISSING = f"svhn needs scipy to read .mat files: {install_hint('svhn')}"
_PIL_MISSING = f"imagenette needs Pillow to decode images: {install_hint('imagenette')}"


class _SvhnFormat(_Format):
    def load(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> RawData:
        try:
            from scipy.io import loadmat
        except ImportError:
            raise DataError(_SCIPY_MISSING) from None
        out: list[np.ndarray] = []
        for f in spec.files:
            p = folder / f
            try:
                m = loadmat(str(p), variable_names=("X", "y"))
                x, y = m["X"], m["y"]
            except Exception as e:
                raise DataError(f"{p} is not a readable SVHN .mat file ({type(e).__name__}: {e}); "
                                "download it again") from None
            if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
                raise DataError(f"{p}: 'X' should be uint8 of shape (32, 32, 3, N), got {x.dtype} {x.shape}; "
                                "download it again")
            y = np.asarray(y, dtype=np.int64).reshape(-1)
            if len(y) != x.shape[3]:
                raise DataError(f"{p}: {x.shape[3]} images but {len(y)} labels; download it again")
            y = np.where(y == 10, 0, y)  # SVHN stores the digit 0 as label 10
            _check_labels(y, spec, str(p))
            out += [_readonly(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), _readonly(y)]
        return RawData(*out)


_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
FIXED_ORDER_SEED = 0  # image folders are stored in one fixed shuffled order, so any prefix mixes classes


class _ImageFolderFormat(_Format):
    splits = ("train", "val")

    def missing(self, folder: Path, spec: DatasetSpec) -> list[str]:
        return [f for f, s in zip(spec.files, self.splits, strict=True) if not (folder / s).is_dir()]

    def _listing(self, folder: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
        classes = sorted(d.name for d in (folder / "train").iterdir() if d.is_dir())
        index = {c: i for i, c in enumerate(classes)}
        files: dict[str, list[tuple[Path, int]]] = {}
        for s in self.splits:
            items: list[tuple[Path, int]] = []
            for d in sorted(p for p in (folder / s).iterdir() if p.is_dir()):
                if d.name not in index:
                    raise DataError(f"{d}: class folder not present in {folder / 'train'}; "
                                    "train/ and val/ must hold the same class folders")
                items += [(f, index[d.name]) for f in sorted(d.iterdir())
                          if f.suffix.lower() in _IMAGE_SUFFIXES]
            files[s] = items
        return classes, files

    def signature(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> tuple:
        dirs = [folder / s for s in self.splits]
        dirs += [d for s in self.splits for d in sorted((folder / s).iterdir()) if d.is_dir()]
        return (str(folder.resolve()), size) + tuple((str(d), d.stat().st_mtime_ns) for d in dirs)

    def load(self, folder: Path, spec: DatasetSpec, size: tuple[int, int]) -> RawData:
        try:
            from PIL import Image
        except ImportError:
            raise DataError(_PIL_MISSING) from None
        classes, files = self._listing(folder)
        if len(classes) != spec.num_classes:
            raise DataError(f"{folder / 'train'} holds {len(classes)} class folders, {spec.name} has "
                            f"{spec.num_classes}; pass --data-dir DIR with the full dataset")
        h, w = size

        def decode(path: Path) -> np.ndarray:
            try:
                with Image.open(path) as im:
                    im.draft("RGB", (w, h))  # JPEG: decode at a reduced scale, much faster
                    im = im.convert("RGB")
                    s = max(h / im.height, w / im.width)  # resize the shorter side, centre-crop the rest
                    rw, rh = max(w, round(im.width * s)), max(h, round(im.height * s))
                    im = im.resize((rw, rh), Image.Resampling.BILINEAR, reducing_gap=2.0)
                    left, top = (rw - w) // 2, (rh - h) // 2
                    return np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
            except Exception as e:
                raise DataError(f"cannot decode image {path} ({type(e).__name__}: {e}); "
                                "delete or replace the file") from None

        out: list[np.ndarray] = []
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for s in self.splits:
                items = files[s]
                if not items:
                    raise DataError(f"{folder / s} holds no images (*.JPEG, *.jpg, *.png); "
                                    "pass --data-dir DIR with the full dataset")
                order = np.random.default_rng(FIXED_ORDER_SEED).permutation(len(items))
                items = [items[i] for i in order]
                imgs = list(pool.map(decode, [p for p, _ in items]))
                x = np.stack(imgs).transpose(0, 3, 1, 2)
                out += [_readonly(np.ascontiguousarray(x)),
                        _readonly(np.array([c for _, c in items], dtype=np.int64))]
        return RawData(*out)


FORMATS: dict[str, _Format] = {
    "idx": _IdxFormat(),
    "cifar10": _CifarFormat("labels"),
    "cifar100": _CifarFormat("fine_labels"),
    "svhn": _SvhnFormat(),
    "image-folder": _ImageFolderFormat(),
}


def _format(spec: DatasetSpec) -> _Format:
    try:
        return FORMATS[spec.format]
    except KeyError:
        raise DataError(f"dataset {spec.name!r} has unknown format {spec.format!r}; "
                        f"use one of {', '.join(FORMATS)}") from None


def resolve_folder(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``spec``'s files: ``data_dir`` (or the spec's default) or one of its ``subdirs``."""
    fmt = _format(spec)
    where = ""
    if spec.subdirs:
        where = f" (directly or in a subfolder {' / '.join(spec.subdirs)})"
    if data_dir is None:
        if spec.default_dir is None:
            raise DataError(
                f"{spec.name} has no default data folder; pass --data-dir DIR (a folder with "
                f"{fmt.expected(spec)}{where}); {spec.hint}"
            )
        base = Path(spec.default_dir)
    else:
        base = Path(data_dir).expanduser()
    for cand in [base] + [base / s for s in spec.subdirs]:
        if cand.is_dir() and not fmt.missing(cand, spec):
            return cand
    if not base.is_dir():
        problem = f"folder {base} does not exist"
    else:
        problem = f"missing in {base}: {', '.join(fmt.missing(base, spec))}"
    raise DataError(
        f"{spec.name} files not found ({problem}); expected {fmt.expected(spec)}{where}; "
        f"to fix: {spec.hint or 'pass --data-dir DIR'}"
    )


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, fmt_name: str, folder: str, size: tuple[int, int], signature: tuple,
                 spec: DatasetSpec) -> RawData:
    return FORMATS[fmt_name].load(Path(folder), spec, size)


def load_raw(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None = None,
             size: tuple[int, int] | None = None) -> RawData:
    """Decode ``spec``'s train and test sets (uint8 NCHW, int64 labels), cached on the files' mtimes."""
    folder = resolve_folder(spec, data_dir)
    fmt = _format(spec)
    size = tuple(size) if size is not None else spec.image_size  # type: ignore[assignment]
    try:
        sig = fmt.signature(folder, spec, size)
    except OSError as e:
        raise DataError(f"cannot read {folder}: {e}; check the folder's permissions") from None
    return _load_cached(spec.name, spec.format, str(folder), size, sig, spec)


def clear_cache() -> None:
    """Forget every decoded dataset held in memory."""
    _load_cached.cache_clear()
    _read_idx_cached.cache_clear()
