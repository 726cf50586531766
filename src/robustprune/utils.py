"""Small helpers shared by every layer: seeding, devices, generators, config hashing, output-path checks."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def check_device(requested: str | torch.device) -> torch.device:
    """``requested`` as a torch.device this machine has, or a one-line ConfigError that says what to use."""
    from robustprune.errors import ConfigError

    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {str(requested)!r}; use cpu, cuda or cuda:N (N a GPU index)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(requested)!r} requested but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(requested)!r}: this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ConfigError(f"device {str(requested)!r} is not supported; use cpu, cuda or cuda:N")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {str(requested)!r} requested but MPS is not available; use --device cpu")
    return dev


def default_device(requested: str | None = None) -> torch.device:
    """``requested`` if given ("cpu", "cuda", "cuda:1"), else CUDA when present, else CPU."""
    if requested:
        return check_device(requested)
    env = os.environ.get("ROBUSTPRUNE_DEVICE")
    if env:
        return default_device(env)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` (random tensors for that device must come from a generator there)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The tensor a forward hook sees: ``obj`` itself, or the first element of a tuple/list of tensors."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


def config_hash(cfg: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-able config (dict keys sorted)."""
    blob = json.dumps(cfg, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def eps_to_str(eps: float) -> str:
    """RobustBench-style ε string: 8/255 -> "8/255", 0.1 -> "0.1", 0.2 -> "0.2"."""
    short = f"{eps:.6g}"
    if len(short.replace("0.", "", 1)) <= 4:
        return short
    num = eps * 255
    if abs(num - round(num)) < 1e-6 and round(num) != 0:
        return f"{int(round(num))}/255"
    return short


def parse_eps(value: str | float) -> float:
    """Parse "8/255", "0.1" or a float into a float ε."""
    if isinstance(value, (int, float)):
        return float(value)
    s = str(value).strip()
    if "/" in s:
        a, b = s.split("/", 1)
        return float(a) / float(b)
    return float(s)


def install_hint(extra: str) -> str:
    """How to install an optional extra, from a clone and from the package index (both, since either may apply).

    >>> install_hint("autoattack")
    'pip install -e ".[autoattack]" (from a clone of the repository) or pip install \\'robustprune[autoattack]\\''
    """
    return f"pip install -e \".[{extra}]\" (from a clone of the repository) or pip install 'robustprune[{extra}]'"


def _output_error(what: str, path: Path, reason: str) -> Exception:
    from robustprune.errors import OutputPathError

    return OutputPathError(f"cannot write {what} {path}: {reason}; choose another path (nothing was computed yet)")


def _folder_problem(p: Path) -> str | None:
    """Why files cannot be written into folder ``p`` (created with its parents when missing), or None."""
    if p.exists() and not p.is_dir():
        return "it exists and is not a folder"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        return "a part of the path exists and is not a folder"
    except OSError as exc:
        return f"the folder cannot be created ({exc.strerror or exc.__class__.__name__})"
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".robustprune-write-test-", dir=p)
    except OSError as exc:
        return f"the folder is not writable ({exc.strerror or exc.__class__.__name__})"
    try:
        os.write(fd, b"ok")
    except OSError as exc:
        return f"the folder is not writable ({exc.strerror or exc.__class__.__name__})"
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass
    return None


def check_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Make sure files can be written into folder ``path`` *before* any work starts; return it as a Path.

    Creates the folder (and its parents) when missing, then creates and removes a small probe file in it, so an
    unwritable, immutable, read-only or pseudo (``/proc``) folder, or a path that names an existing regular file,
    fails now with a one-line :class:`~robustprune.errors.OutputPathError` instead of after the computation.
    ``what`` names the path in the message (e.g. ``"--out folder"``).
    """
    p = Path(path).expanduser()
    problem = _folder_problem(p)
    if problem is not None:
        raise _output_error(what, p, problem)
    return p


def check_writable_file(path: str | os.PathLike[str], what: str = "output file", *, overwrite: bool = True) -> Path:
    """Make sure file ``path`` can be written *before* any work starts; return it as a Path.

    Its folder is created when missing and test-written (see :func:`check_writable_dir`); the path must not be a
    folder; an existing file must be writable (and is refused when ``overwrite`` is False). The file itself is not
    created or touched, so nothing is left behind if the work later fails.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise _output_error(what, p, "it is a folder; give a file name")
    problem = _folder_problem(p.parent)
    if problem is not None:
        raise _output_error(what, p, f"its folder {p.parent}: {problem}")
    if p.exists():
        if not overwrite:
            raise _output_error(what, p, "it exists already")
        if not os.access(p, os.W_OK):
            raise _output_error(what, p, "the existing file is not writable")
    return p


def nonfinite_tensor(model: torch.nn.Module) -> str | None:
    """Name of the first parameter or floating-point buffer of ``model`` holding a NaN or an infinity, else None.

    One device synchronisation in all. A model with such weights (e.g. from a diverged training) gives meaningless
    accuracies: refuse to evaluate or store it.
    """
    named = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]
             if t.is_floating_point() and t.numel()]
    if not named:
        return None
    dev = named[0][1].device
    ok = torch.stack([torch.isfinite(t.detach()).all().to(dev) for _, t in named])
    if bool(ok.all()):
        return None
    return named[int((~ok).nonzero()[0])][0]
