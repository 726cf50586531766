"""Where a result came from: the code version and content hashes of files."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from robustprune._version import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+<git short sha>`` when run from a clone, else the package version."""
    version = __version__
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
