"""What the evaluation needs to know about an attack: its function, norm, kind and the settings it takes.

The attack layer describes its attacks with ``robustprune.attacks.get_attack_info(name) -> AttackInfo(name, fn,
norm, kind, extra)`` (norm ``"Linf" | "L2" | "L0"``, kind ``"budget" | "min-norm"``); a min-norm attack returns
``MinNormResult(x_adv, norms)`` with ``norms = inf`` where it found no adversarial example. This module adds
what the evaluation needs on top of that (the settings an attack takes, the norm its settings select, the
keyword arguments of one run). Attacks the attack layer does not describe (plug-ins, test doubles) can be
described here with :func:`register_attack_info`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from robustprune.attacks import get_attack_info
from robustprune.attacks.results import NORMS, canonical_norm
from robustprune.errors import ConfigError
from robustprune.utils import parse_eps

KINDS = ("budget", "min-norm")
DEFAULT_EVAL_STEPS = 20
"""Steps given to a budget attack with a ``steps`` setting when the user sets none (evaluation PGD >= 20 steps)."""


@dataclass(frozen=True)
class EvalAttackInfo:
    """An attack as the evaluation sees it."""

    name: str
    fn: Callable[..., Any]
    norm: str = "Linf"
    kind: str = "budget"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def min_norm(self) -> bool:
        return self.kind == "min-norm"

    def params(self) -> Mapping[str, inspect.Parameter]:
        try:
            return inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return {}

    def accepts(self, key: str) -> bool:
        params = self.params()
        return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def settings_names(self) -> list[str]:
        skip = {"model", "x", "y", "eps", "generator"}
        return [k for k, p in self.params().items()
                if k not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def is_min_norm_result(out: Any) -> bool:
    return hasattr(out, "x_adv") and hasattr(out, "norms")


_LOCAL: dict[str, EvalAttackInfo] = {}


def register_attack_info(name: str, fn: Callable[..., Any], *, norm: str = "Linf", kind: str = "budget",
                         extra: Mapping[str, Any] | None = None) -> EvalAttackInfo:
    """Describe an attack the attack layer does not describe (it takes precedence over the attack layer)."""
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    info = EvalAttackInfo(name, fn, norm, kind, dict(extra or {}))
    _LOCAL[name.lower()] = info
    return info


def unregister_attack_info(name: str) -> None:
    _LOCAL.pop(name.lower(), None)


def attack_info(name: str) -> EvalAttackInfo:
    """Function, norm and kind of the attack ``name`` (``UnknownNameError`` lists the registered attacks)."""
    key = str(name).lower()
    if key in _LOCAL:
        return _LOCAL[key]
    info = get_attack_info(name)
    return EvalAttackInfo(info.name, info.fn, info.norm, info.kind, {"extra": info.extra})


def effective_norm(info: EvalAttackInfo, settings: Mapping[str, Any]) -> str:
    """The norm a run measures: the attack's, unless it takes a ``norm`` setting (AutoAttack) that is set."""
    p = settings.get("norm")
    if p is None or "norm" not in info.params():
        return info.norm
    return canonical_norm(p)


def info_for_spec(spec: Any) -> EvalAttackInfo:
    """The attack of an AttackSpec / AttackConfig / dict, with the norm its settings select."""
    info = attack_info(spec_name(spec))
    norm = effective_norm(info, spec_settings(spec))
    return info if norm == info.norm else replace(info, norm=norm)


# ------------------------------------------------------------------------------------------------ norms
def robust_mask_from_norms(norms: Tensor, eps: float) -> Tensor:
    """Per sample: robust at budget ε iff its minimal adversarial norm exceeds ε (an adversarial example at
    exactly ε lies inside the closed ε-ball), the per-sample form of
    :func:`robustprune.attacks.robust_accuracy_from_norms`. Samples misclassified when clean carry norm 0."""
    return norms > float(eps)


# ------------------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class AttackConfig:
    """An attack by registry name at one or more budgets with any settings its function takes.

    Duck-types ``robustprune.study.AttackSpec`` (``name``, ``eps``, ``settings()``), without AttackSpec's fixed
    set of keys, so any registered attack's settings can be given (``c``, ``confidence``, ``version`` ...).
    """

    name: str
    eps: tuple[float, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.options)}

    @classmethod
    def build(cls, name: str, eps: Any = (), **options: Any) -> "AttackConfig":
        """Validated config: the attack exists, ε are numbers ("8/255" allowed) in range for its norm, every
        option is a setting of its function; budget attacks with ``steps`` default to 20 steps."""
        info = attack_info(name)
        if isinstance(eps, (int, float, str)):
            eps = [eps]
        parsed = []
        for e in eps or ():
            try:
                v = parse_eps(e)
            except (TypeError, ValueError, ZeroDivisionError):
                raise ConfigError(f"attack {name!r}: eps {e!r} is not a number such as 0.1 or 8/255") from None
            if not math.isfinite(v) or v <= 0:
                raise ConfigError(f"attack {name!r}: eps must be > 0, got {e!r}")
            if effective_norm(info, options) == "Linf" and v > 1:
                raise ConfigError(f"attack {name!r}: an L∞ eps lies in (0, 1] (pixel units, e.g. 8/255), got {e!r}")
            parsed.append(v)
        names = info.settings_names()
        for k in options:
            if k in ("model", "x", "y", "generator"):
                raise ConfigError(f"attack {name!r}: {k!r} is not a setting")
            if not info.accepts(k):
                raise ConfigError(f"attack {name!r} has no setting {k!r}; its settings are: "
                                  + (", ".join(names) or "none"))
        opts = {k: v for k, v in options.items() if v is not None}
        if not info.min_norm and "steps" in info.params() and "steps" not in opts:
            opts["steps"] = DEFAULT_EVAL_STEPS
        return cls(name, tuple(parsed), opts)


def spec_settings(spec: Any) -> dict[str, Any]:
    """``spec.settings()`` of an AttackSpec / AttackConfig, or a plain dict's keys except eps."""
    if isinstance(spec, Mapping):
        return {k: v for k, v in spec.items() if k != "eps"}
    return dict(spec.settings())


def spec_name(spec: Any) -> str:
    return spec["name"] if isinstance(spec, Mapping) else spec.name


def spec_eps(spec: Any) -> tuple[float, ...]:
    eps = spec.get("eps", ()) if isinstance(spec, Mapping) else spec.eps
    if eps is None:
        return ()
    if isinstance(eps, (int, float, str)):
        eps = [eps]
    return tuple(parse_eps(e) for e in eps)


def attack_kwargs(fn: Any, spec: Any, eps: float | None, *, min_norm: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``fn`` that ``spec`` sets (ε included for budget attacks); for a budget attack
    with ``steps`` and ``alpha`` settings and no ``alpha`` given, Madry's step 2.5 ε / steps."""
    info = fn if isinstance(fn, EvalAttackInfo) else EvalAttackInfo("", fn)
    kw: dict[str, Any] = {} if min_norm else {"eps": eps}
    settings = spec_settings(spec)
    settings.pop("name", None)
    settings.pop("eps", None)
    if (not min_norm and "alpha" in info.params() and settings.get("alpha") is None
            and "steps" in info.params() and settings.get("steps")):
        settings["alpha"] = 2.5 * eps / settings["steps"]
    for k, v in settings.items():
        if v is not None and k != "generator" and info.accepts(k):
            kw[k] = v
    return kw


def call_attack(info: EvalAttackInfo, model: Any, x: Tensor, y: Tensor, kw: Mapping[str, Any],
                generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """Run one batch: ``(x_adv, norms)`` (norms None for a budget attack returning a tensor)."""
    extra = {"generator": generator} if generator is not None and info.accepts("generator") else {}
    out = info.fn(model, x, y, **extra, **kw)
    if is_min_norm_result(out):
        return out.x_adv.detach(), out.norms.detach().to(x.device)
    if not isinstance(out, Tensor):
        raise ConfigError(f"attack {info.name!r} returned {type(out).__name__}; expected x_adv or MinNormResult")
    return out.detach(), None
