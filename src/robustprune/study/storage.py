"""Where a study's artifacts (checkpoints and their sidecars) live: the study folder by default, or the study key
``storage`` -- another folder, or a URI such as ``s3://bucket/study`` reached through fsspec (the file-system layer
Ray itself uses; ``s3://`` needs ``s3fs``, ``gs://`` needs ``gcsfs``, each imported lazily).

Paths inside a location are relative (``checkpoints/<model_id>.safetensors``) and are what the ``models`` table's
``checkpoint`` column stores, so a database is read the same way wherever its artifacts are. Every write is atomic
where the file system allows it (a temporary name, then a rename) and checked against the content hash the database
will hold.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from robustprune.errors import ConfigError


class StorageLocation:
    """A folder (local path or fsspec URI) that holds a study's artifacts under relative paths."""

    def __init__(self, url: str | os.PathLike) -> None:
        text = str(url)
        self.url = text
        if "://" not in text or text.startswith("file://"):
            self.local: Path | None = Path(text[len("file://"):] if text.startswith("file://") else text)
            self.fs = None
            self.root = str(self.local)
        else:
            try:
                import fsspec
            except ImportError:  # pragma: no cover - fsspec comes with torch
                raise ConfigError(f"storage {text!r} needs fsspec: pip install fsspec") from None
            protocol = text.split("://", 1)[0]
            try:
                self.fs, self.root = fsspec.core.url_to_fs(text)
            except (ImportError, ValueError) as exc:
                raise ConfigError(f"storage {text!r}: {exc} (the {protocol}:// file system needs its fsspec "
                                  "package, e.g. s3fs for s3://, gcsfs for gs://)") from None
            self.local = None

    def __repr__(self) -> str:
        return f"StorageLocation({self.url!r})"

    def _remote(self, rel: str) -> str:
        return self.root.rstrip("/") + "/" + rel

    def path(self, rel: str) -> Path | None:
        """The local path of ``rel`` when this location is a local folder (None for a remote one)."""
        return None if self.local is None else self.local / rel

    def exists(self, rel: str) -> bool:
        if self.local is not None:
            return (self.local / rel).is_file()
        return bool(self.fs.exists(self._remote(rel)))

    def put(self, local_file: Path, rel: str, *, move: bool = False) -> None:
        """Copy (or move, on the same local file system) ``local_file`` to ``rel``, atomically where possible."""
        if self.local is not None:
            dest = self.local / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if move:
                try:
                    os.replace(local_file, dest)
                    return
                except OSError:  # another file system: copy below
                    pass
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(local_file, tmp)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return
        target = self._remote(rel)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local_file), target)

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local is not None:
            from robustprune.checkpoint import _atomic_write_bytes

            _atomic_write_bytes(self.local / rel, data)
            return
        target = self._remote(rel)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(target, data)

    def get(self, rel: str, dest: Path) -> bool:
        """Copy ``rel`` to the local file ``dest``; False when it is not there."""
        if not self.exists(rel):
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.local is not None:
            shutil.copyfile(self.local / rel, dest)
        else:
            self.fs.get_file(self._remote(rel), str(dest))
        return True

    def check_writable(self) -> None:
        """A probe file written and removed: a storage location nobody can write to is an error before any work."""
        rel = f".write-test-{os.getpid()}"
        try:
            self.write_bytes(rel, b"ok")
            if self.local is not None:
                (self.local / rel).unlink(missing_ok=True)
            else:
                self.fs.rm(self._remote(rel))
        except Exception as exc:  # noqa: BLE001 - any failure here is the user's location
            raise ConfigError(f"cannot write to the study's storage {self.url!r} ({type(exc).__name__}: {exc}); "
                              "choose a writable location (study key storage:, or --storage)") from None
