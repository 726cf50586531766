"""Small helpers shared by every layer: seeding, devices, generators, config hashing."""

from __future__ import annotations

import hashlib
import json
import os
import random
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


def default_device(requested: str | None = None) -> torch.device:
    """``requested`` if given ("cpu", "cuda", "cuda:1"), else CUDA when present, else CPU."""
    if requested:
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            from robustprune.errors import ConfigError

            raise ConfigError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
        return dev
    env = os.environ.get("ROBUSTPRUNE_DEVICE")
    if env:
        return default_device(env)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` (random tensors for that device must come from a generator there)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


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
