"""`robustprune data fetch`: against small files of the real formats served on loopback (no network). A good file is
verified, unpacked and loads; a wrong checksum, a truncated download or a dead address leaves nothing behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from conftest import cli


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D102
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def _cifar10_tarball(path: Path, n: int = 4) -> str:
    """A cifar-10-python.tar.gz of the real layout (cifar-10-batches-py/data_batch_1..5, test_batch; Python-3
    pickles of dicts with data (N, 3072) uint8 and labels), with n images per batch; returns its MD5."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            obj = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   "labels": [int(v) for v in rng.integers(0, 10, n)]}
            blob = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _sources(base_url: str, md5: str):
    from robustprune.data.fetch import SOURCES, Download, Source

    real = SOURCES["cifar10"].downloads[0]
    return {"cifar10": Source("cifar10", "cifar-10-batches-py",
                              (Download(f"{base_url}/{real.filename}", real.filename, md5, unpack=True),), "test")}


def test_a_good_file_is_verified_unpacked_and_loads(server, tmp_path):
    from robustprune.data import load_splits
    from robustprune.data.fetch import fetch_dataset

    url, www = server
    md5 = _cifar10_tarball(www / "cifar-10-python.tar.gz")
    lines: list[str] = []
    where = fetch_dataset("cifar10", tmp_path / "data", sources=_sources(url, md5), log=lines.append)
    assert where == (tmp_path / "data").resolve()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cifar-10-batches-py"]  # no temp left
    s = load_splits("cifar10", data_dir=where, val_size=2)
    assert (len(s.train), len(s.val), len(s.test)) == (18, 2, 4)
    assert any(f"verified cifar-10-python.tar.gz (MD5 {md5})" in ln for ln in lines)
    again: list[str] = []  # a second fetch finds it complete and downloads nothing
    (www / "cifar-10-python.tar.gz").unlink()
    assert fetch_dataset("cifar10", tmp_path / "data", sources=_sources(url, md5), log=again.append) == where
    assert again == [f"cifar10 is already in {tmp_path / 'data' / 'cifar-10-batches-py'}"]


def test_a_wrong_checksum_leaves_nothing(server, tmp_path):
    from robustprune.data.fetch import fetch_dataset
    from robustprune.errors import DataError

    url, www = server
    md5 = _cifar10_tarball(www / "cifar-10-python.tar.gz")
    wrong = "0" * 32
    with pytest.raises(DataError, match=f"has MD5 {md5}, not the published {wrong}.*nothing was kept"):
        fetch_dataset("cifar10", tmp_path / "data", sources=_sources(url, wrong))
    assert list((tmp_path / "data").iterdir()) == []
    with pytest.raises(DataError, match="failed.*nothing was kept"):  # a dead address (404): the same
        fetch_dataset("cifar10", tmp_path / "data", sources=_sources(url + "/gone", md5))
    assert list((tmp_path / "data").iterdir()) == []


def test_svhn_mat_files_are_fetched_into_the_folder_its_loader_searches(server, tmp_path):
    sio = pytest.importorskip("scipy.io")
    from robustprune.data import load_splits
    from robustprune.data.fetch import SOURCES, Download, Source, fetch_dataset

    url, www = server
    rng = np.random.default_rng(0)
    downloads = []
    for d, n in zip(SOURCES["svhn"].downloads, (5, 3)):
        sio.savemat(www / d.filename, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                       "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
        downloads.append(Download(f"{url}/{d.filename}", d.filename,
                                  hashlib.md5((www / d.filename).read_bytes()).hexdigest()))
    where = fetch_dataset("svhn", tmp_path / "d", sources={"svhn": Source("svhn", "svhn", tuple(downloads), "t")})
    s = load_splits("svhn", data_dir=where, val_size=1)
    assert (len(s.train), len(s.test)) == (4, 3)


def test_the_cli_prints_the_data_dir_and_refuses_in_one_line(server, tmp_path, monkeypatch, capsys):
    import robustprune.data.fetch as fetch

    url, www = server
    md5 = _cifar10_tarball(www / "cifar-10-python.tar.gz")
    monkeypatch.setattr(fetch, "SOURCES", {**fetch.SOURCES, **_sources(url, md5)})
    code, out, err = cli(monkeypatch, capsys, "data", "fetch", "cifar10", "--to", str(tmp_path / "d"))
    assert code == 0, out + err
    assert out.strip().splitlines()[-1] == f"--data-dir {(tmp_path / 'd').resolve()}"
    monkeypatch.setattr(fetch, "SOURCES", {**fetch.SOURCES, **_sources(url, "f" * 32)})
    code, out, err = cli(monkeypatch, capsys, "data", "fetch", "cifar10", "--to", str(tmp_path / "e"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "MD5" in lines[0], err
    assert not (tmp_path / "e" / "cifar-10-batches-py").exists()
    code, out, err = cli(monkeypatch, capsys, "data", "fetch", "mnist-of-mars", "--to", str(tmp_path / "e"))
    assert code == 2 and "can fetch cifar10, cifar100, svhn" in err
