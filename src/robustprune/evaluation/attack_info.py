"""What the evaluation needs to know about an attack: its function, norm, kind and the settings it takes.

One description of an attack serves every layer: ``robustprune.attacks.AttackInfo`` (name, fn, norm, kind, extra,
with ``min_norm``, ``params()``, ``accepts()``, ``settings_names()``) says what an attack is, and
``robustprune.attacks.AttackConfig`` (the study's ``AttackSpec``) says how to run it. ``EvalAttackInfo`` is the
same class as ``AttackInfo`` (kept as a name for old imports). Attacks the attack layer does not describe (plug-ins,
test doubles) can be described here with :func:`register_attack_info`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from robustprune.attacks import get_attack_info
from robustprune.attacks.config import DEFAULT_EVAL_STEPS, AttackConfig  # noqa: F401 - re-exported
from robustprune.attacks.config import effective_norm as _effective_norm
from robustprune.attacks.registry import ATTACK_INFO, AttackInfo, register_attack, unregister_attack
from robustprune.attacks.results import NORMS
from robustprune.errors import ConfigError
from robustprune.utils import parse_eps

KINDS = ("budget", "min-norm")
EvalAttackInfo = AttackInfo
"""The evaluation's view of an attack is the attack layer's :class:`~robustprune.attacks.AttackInfo`."""


def is_min_norm_result(out: Any) -> bool:
    return hasattr(out, "x_adv") and hasattr(out, "norms")


_LOCAL: dict[str, AttackInfo] = {}


def register_attack_info(name: str, fn: Callable[..., Any], *, norm: str = "Linf", kind: str = "budget",
                         extra: str | None = None) -> AttackInfo:
    """Describe (and register) an attack the attack layer does not ship (plug-ins, test doubles): it joins the
    attack registry, so :class:`AttackConfig` and the CLI know it; :func:`unregister_attack_info` removes it."""
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    key = name.lower()
    if key in _LOCAL:
        unregister_attack(key)
    if key in ATTACK_INFO:  # a shipped attack's name: described here only, the registry keeps the shipped one
        info = AttackInfo(key, fn, norm, kind, extra)  # type: ignore[arg-type]
    else:
        info = register_attack(key, fn, norm=norm, kind=kind, extra=extra)  # type: ignore[arg-type]
    _LOCAL[key] = info
    return info


def unregister_attack_info(name: str) -> None:
    key = name.lower()
    info = _LOCAL.pop(key, None)
    if info is not None and ATTACK_INFO.get(key) is info:
        unregister_attack(key)


def attack_info(name: str) -> AttackInfo:
    """Function, norm and kind of the attack ``name`` (``UnknownNameError`` lists the registered attacks)."""
    key = str(name).lower()
    if key in _LOCAL:
        return _LOCAL[key]
    return get_attack_info(name)


def effective_norm(info: AttackInfo, settings: Mapping[str, Any]) -> str:
    """The norm a run measures: the attack's, unless it takes a ``norm`` setting (AutoAttack) that is set."""
    return _effective_norm(info, dict(settings))


def info_for_spec(spec: Any) -> EvalAttackInfo:
    """The attack of an AttackSpec / AttackConfig / dict, with the norm its settings select."""
    info = attack_info(spec_name(spec))
    norm = effective_norm(info, spec_settings(spec))
    return info if norm == info.norm else replace(info, norm=norm)


# ------------------------------------------------------------------------------------------------ norms
def attack_runs(info: AttackInfo, settings: Mapping[str, Any]) -> tuple[int, int, int, str]:
    """(steps, restarts, runs, what the runs are) of one attack at one budget: the gradient steps it spends per
    point are ``steps x restarts x runs`` (APGD: APGD-CE + one run per target class; AutoAttack is described by
    its own schedule and counted as APGD's standard 100 steps x 1 + 9 targets x 2 for FAB-T and Square)."""
    if info.name == "autoattack":
        return 100, 1, 1 + 9 + 9 + 9, "APGD-CE, APGD-T x 9, FAB-T x 9, Square"
    steps = int(settings.get("steps") or info.default("steps") or 1)
    restarts = int(settings.get("restarts") or info.default("restarts") or 1)
    runs, what = 1, ""
    if info.accepts("n_target_classes"):
        t = int(settings.get("n_target_classes") or info.default("n_target_classes") or 0)
        ce = info.name not in ("apgd-t",)
        runs = t + (1 if ce else 0)
        what = f"{'APGD-CE + ' if ce else ''}{t} target{'s' if t != 1 else ''}"
    return steps, restarts, runs, what


def robust_mask_from_norms(norms: Tensor, eps: float) -> Tensor:
    """Per sample: robust at budget ε iff its minimal adversarial norm exceeds ε (an adversarial example at
    exactly ε lies inside the closed ε-ball), the per-sample form of
    :func:`robustprune.attacks.robust_accuracy_from_norms`. Samples misclassified when clean carry norm 0."""
    return norms > float(eps)


# ------------------------------------------------------------------------------------------------ configs
# AttackConfig (robustprune.attacks.config) is the one description of an attack to run; re-exported here.


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
    info = fn if isinstance(fn, AttackInfo) else AttackInfo("", fn)
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
