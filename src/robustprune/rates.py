"""Compression rate and sparsity: the two words for one quantity (a base module, beside ``utils``).

The library counts in compression rates c: 1/c of the prunable weights remain. The field mostly says *sparsity*
s, the fraction removed: s = 1 - 1/c, c = 1/(1 - s), so ``--sparsity 0.99`` is ``--rate 100`` and a structured
"90 %" is c = 10. Every place that takes a rate (``robustprune prune --rate``, a study's ``compression`` /
``method_rates`` / ``group_rates``, ``robustprune.prune(rate=)``) also takes it as a sparsity, through
:func:`rate_from_sparsity` and :func:`merge_rates` here, so the two always mean the same model (the rate made from a
sparsity is rounded to 12 significant digits: ``1 / (1 - 0.99)`` is 100.00000000000009 in floating point, and
must be the rate 100 of the same model id and file name).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from robustprune.errors import ConfigError

SIGNIFICANT = 12
"""Significant digits a rate made from a sparsity is rounded to (see the module docstring)."""


def _clean(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT}g}")


def parse_sparsity(value: Any, *, what: str = "--sparsity", example: str = "--sparsity 0.99 (rate 100)") -> float:
    """A sparsity as a fraction in [0, 1): a number (0.99) or a percentage string ("99%"). Anything else, or a
    value out of range, is a one-line :class:`ConfigError` naming ``what``, the range and ``example``."""
    text = str(value).strip()
    try:
        if isinstance(value, str) and text.endswith("%"):
            s = float(text[:-1]) / 100.0
        elif isinstance(value, bool):
            raise ValueError
        else:
            s = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a fraction of the prunable weights removed, in [0, 1) (or a "
                          f"percentage such as 99%), got {value!r}; e.g. {example}") from None
    if not (math.isfinite(s) and 0.0 <= s < 1.0):
        hint = f" (did you mean {s / 100:g}, i.e. {s:g}%?)" if 1.0 < s < 100.0 else ""
        raise ConfigError(f"{what} must be in [0, 1), the fraction of the prunable weights removed (sparsity s is "
                          f"compression rate 1/(1-s)), got {value!r}{hint}; e.g. {example}")
    return s


def rate_from_sparsity(value: Any, *, what: str = "--sparsity", example: str = "--sparsity 0.99 (rate 100)") -> float:
    """The compression rate c = 1/(1 - s) of sparsity ``value`` (see :func:`parse_sparsity`), rounded so that
    ``rate_from_sparsity(0.99) == 100.0``."""
    s = parse_sparsity(value, what=what, example=example)
    return _clean(1.0 / (1.0 - s))


def sparsity_from_rate(rate: float | None) -> float | None:
    """The sparsity s = 1 - 1/c of compression rate ``rate`` (None for None, e.g. a learned rate)."""
    if rate is None:
        return None
    c = float(rate)
    if math.isinf(c):
        return 1.0
    return _clean(1.0 - 1.0 / c) if c > 0 else float("nan")


def sparsity_percent(rate: float | None) -> str:
    """``"99"`` for c = 100, ``"93.75"`` for c = 16, ``"0"`` for c = 1 ('' for None): the target sparsity in %."""
    s = sparsity_from_rate(rate)
    return "" if s is None else f"{100.0 * s:.4g}"


def merge_rates(rates: Sequence[Any] | None, sparsities: Sequence[Any] | None, *, rate_what: str = "--rate",
                sparsity_what: str = "--sparsity", example: str = "--sparsity 0.99 (rate 100)",
                ignore_unpruned: bool = False) -> list[float] | None:
    """The rates given as ``rates`` and / or ``sparsities`` (None when neither is given). Given both, they must name
    the same set of rates, else a one-line :class:`ConfigError` (``ignore_unpruned``: c = 1 / s = 0, the unpruned
    model a study always has, is left out of the comparison)."""
    from_s = None if sparsities is None else [rate_from_sparsity(s, what=sparsity_what, example=example)
                                              for s in sparsities]
    given = None if rates is None else [float(r) for r in rates]
    if from_s is None:
        return given
    if given is None:
        return from_s

    def key(values: Iterable[float]) -> set[float]:
        return {_clean(v) for v in values if not (ignore_unpruned and v == 1.0)}

    if key(given) != key(from_s):
        shown = " ".join(f"{r:g}" for r in given)
        pairs = " ".join(f"{s}" for s in sparsities or [])
        as_rates = " ".join(f"{r:g}" for r in from_s)
        raise ConfigError(f"{rate_what} {shown} and {sparsity_what} {pairs} (= rate {as_rates}) disagree; give one "
                          f"of them (sparsity s is rate 1/(1-s), e.g. 0.99 is rate 100)")
    return given
