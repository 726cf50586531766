"""``robustprune data fetch``: download CIFAR-10, CIFAR-100 or SVHN from the official addresses, verify the published
checksums, unpack, and say which ``--data-dir`` to use.

The checksums are the MD5s the datasets' pages and torchvision (``torchvision/datasets/cifar.py``, ``svhn.py``)
publish for these exact files. Everything is written into a hidden temporary folder beside the target and moved into
place with one rename once every file is downloaded, verified, unpacked and found complete by the dataset's own
loader check, so a failed, interrupted or tampered download leaves nothing behind (and a complete folder is never
overwritten). Nothing is fetched anywhere else: loading data (training, studies) never downloads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robustprune.errors import ConfigError, DataError


@dataclass(frozen=True)
class Download:
    """One file: where it is, its name, its published MD5, and whether it is a ``.tar.gz`` to unpack."""

    url: str
    filename: str
    md5: str
    unpack: bool = False


@dataclass(frozen=True)
class Source:
    """A dataset's files; ``folder`` is the sub-folder of the target they end up in (one the dataset's loader
    searches: :attr:`robustprune.data.specs.DatasetSpec.subdirs`)."""

    dataset: str
    folder: str
    downloads: tuple[Download, ...]
    page: str


SOURCES: dict[str, Source] = {
    "cifar10": Source("cifar10", "cifar-10-batches-py", (
        Download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                 "c58f30108f718f92721af3b95e74349a", unpack=True),), "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "cifar100": Source("cifar100", "cifar-100-python", (
        Download("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", unpack=True),), "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "svhn": Source("svhn", "svhn", (
        Download("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "train_32x32.mat",
                 "e26dedcc434d2e4c54c9b2d4a06d8373"),
        Download("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "test_32x32.mat",
                 "eb5a983be6a315427106f1b164d9cef3"),
    ), "http://ufldl.stanford.edu/housenumbers/"),
}

DEFAULT_DIR = Path("data")
"""Where ``data fetch`` puts the files without ``--to`` (relative to the current folder)."""


def _download(d: Download, dest: Path, *, timeout: float, log: Callable[[str], None]) -> None:
    """Stream ``d.url`` into ``dest``, checking its MD5 (one-line :class:`DataError` on any failure)."""
    md5 = hashlib.md5(usedforsecurity=False)
    got = 0
    try:
        with urllib.request.urlopen(d.url, timeout=timeout) as resp, open(dest, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0)
            log(f"downloading {d.url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                fh.write(chunk)
                md5.update(chunk)
                got += len(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"downloading {d.url} failed ({reason}); nothing was kept; check the network and run "
                        "`robustprune data fetch` again") from None
    if total and got != total:
        raise DataError(f"downloading {d.url} stopped after {got} of {total} bytes; nothing was kept; run it again")
    if md5.hexdigest() != d.md5:
        raise DataError(f"{d.filename} from {d.url} has MD5 {md5.hexdigest()}, not the published {d.md5} (a "
                        "corrupt or changed download); nothing was kept")


def _unpack(archive: Path, into: Path, folder: str) -> None:
    """Extract a ``.tar.gz`` (members stay inside ``into``: tarfile's ``data`` filter) whose files live in
    ``folder/``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = tar.getnames()
            if not names or any(Path(n).parts[0] != folder for n in names):
                raise DataError(f"{archive.name} does not hold a {folder}/ folder as expected; nothing was kept")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"unpacking {archive.name} failed ({exc}); nothing was kept") from None


def fetch_dataset(name: str, to: str | os.PathLike[str] | None = None, *, sources: dict[str, Source] | None = None,
                  timeout: float = 60.0, log: Callable[[str], None] | None = None) -> Path:
    """Download, verify and unpack dataset ``name`` (``cifar10``, ``cifar100``, ``svhn``) under ``to`` (default
    ``./data``); return the folder to pass as ``--data-dir`` (``to`` itself: each dataset's loader looks in its own
    sub-folder there). A dataset already complete there is not downloaded again. ``sources``: other addresses and
    checksums (tests, mirrors)."""
    from robustprune.data.formats import FORMATS
    from robustprune.data.specs import get_spec

    say = log or (lambda _m: None)
    table = SOURCES if sources is None else sources
    if name not in table:
        raise ConfigError(f"data fetch {name!r}: can fetch {', '.join(sorted(table))} (Fashion-MNIST: apt-get "
                          "install -y dataset-fashion-mnist)")
    src = table[name]
    spec = get_spec(src.dataset)
    fmt = FORMATS[spec.format]
    base = Path(to if to is not None else DEFAULT_DIR).expanduser()
    final = base / src.folder
    if final.is_dir() and not fmt.missing(final, spec):
        say(f"{spec.name} is already in {final}")
        return base.resolve()
    if final.exists():
        raise DataError(f"{final} exists but does not hold {spec.name}'s files (missing "
                        f"{', '.join(fmt.missing(final, spec)) if final.is_dir() else 'everything'}); move it away "
                        "and fetch again")
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{src.folder}.partial-", dir=base))
    except OSError as exc:
        raise DataError(f"cannot write to {base} ({exc.strerror or exc}); pass --to DIR with a writable folder") \
            from None
    try:
        stage = tmp / "unpacked"
        (stage / src.folder).mkdir(parents=True)
        for d in src.downloads:
            dest = tmp / d.filename
            _download(d, dest, timeout=timeout, log=say)
            say(f"verified {d.filename} (MD5 {d.md5})")
            if d.unpack:
                _unpack(dest, stage, src.folder)
                dest.unlink()
            else:
                os.replace(dest, stage / src.folder / d.filename)
        missing = fmt.missing(stage / src.folder, spec)
        if missing:
            raise DataError(f"the downloaded files of {spec.name} lack {', '.join(missing)}; nothing was kept")
        os.rename(stage / src.folder, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"unpacked {spec.name} into {final}")
    return base.resolve()
