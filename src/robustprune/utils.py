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


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is a bool (a Python or NumPy one), else a one-line ConfigError: a string such as ``'no'`` is
    truthy in Python, so ``compile='no'`` would switch compilation on."""
    import numpy as np

    from robustprune.errors import ConfigError

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{what} must be True or False, got {value!r}")


def check_number(value: Any, what: str, *, integer: bool = False, low: float | None = None,
                 high: float | None = None, low_open: bool = False) -> float | int:
    """``value`` as a finite number (an int for ``integer``) within ``[low, high]`` (``(low, high]`` with
    ``low_open``), else a one-line ConfigError naming ``what``. Booleans and strings are refused."""
    import math

    import numpy as np

    from robustprune.errors import ConfigError

    kind = "an integer" if integer else "a number"
    rng = ""
    if low is not None or high is not None:
        lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        rng = " " + " and ".join(t for t in (lo, hi) if t)
    ok_type = (isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.integer,
                                                                                      np.floating)))
    if isinstance(value, (bool, np.bool_)) or not ok_type:
        raise ConfigError(f"{what} must be {kind}{rng}, got {value!r}")
    v = int(value) if integer else float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)) or \
            (high is not None and v > high):
        raise ConfigError(f"{what} must be {kind}{rng}, got {value!r}")
    return v


def describe_output(out: Any) -> str:
    """What a forward pass returned, for messages: ``a tuple of 2 (Tensor(2, 10), Tensor(2, 84))``."""
    Tensor = torch.Tensor  # noqa: N806
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(type(o).__name__ + (f"{tuple(o.shape)}" if isinstance(o, Tensor) else "") for o in out[:4])
        return f"a {type(out).__name__} of {len(out)} ({inner}{', ...' if len(out) > 4 else ''})"
    if isinstance(out, dict):
        return f"a dict with keys {list(out)[:4]}"
    return f"a {type(out).__name__}"


def check_logits(model: torch.nn.Module, x: torch.Tensor, what: str, data_what: str) -> int:
    """One forward pass of two inputs: the model must return one logits tensor (N x classes); its classes. A model
    that cannot run on the inputs, or returns anything else, is a one-line error naming what it returned."""
    from robustprune.errors import ConfigError

    xb = x[:2]
    try:
        with torch.no_grad():
            out = model(xb)
    except Exception as exc:  # noqa: BLE001 - a shape / channel mismatch of the user's model and data
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{what} cannot run on {data_what} (inputs {tuple(xb.shape)}): {first}; give inputs of the "
                          "shape the model takes") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(xb):
        raise ConfigError(f"{what}'s forward must return one logits tensor (N x classes), it returned "
                          f"{describe_output(out)}; wrap it so that forward returns the logits only")
    return int(out.shape[1])
