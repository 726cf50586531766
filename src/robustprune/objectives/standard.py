"""Natural, PGD-AT, TRADES, the clean/adversarial mix of Madaan2020 (Eq. 6) and Fast-AT."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import fgsm, pgd_linf_last, randn_like
from robustprune.errors import ConfigError
from robustprune.objectives.base import AdversarialObjective, ObjectiveOutput, eval_mode, forward_pair
from robustprune.registry import Registry
from robustprune.utils import parse_eps

OBJECTIVES: Registry[type] = Registry("objective")


# --------------------------------------------------------------------------- validation
def _eps(value: Any) -> float:
    try:
        eps = parse_eps(value)
    except (TypeError, ValueError):
        raise ConfigError(f"eps must be a number in (0, 1] such as 0.1 or '8/255', got {value!r}") from None
    if not math.isfinite(eps) or eps <= 0 or eps > 1:
        raise ConfigError(f"eps must be in (0, 1] (pixel units, e.g. 8/255), got {value!r}")
    return eps


def _alpha(value: Any) -> float | None:
    if value is None:
        return None
    try:
        alpha = parse_eps(value)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha must be a positive number or omitted, got {value!r}") from None
    if not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a positive number or omitted, got {value!r}")
    return alpha


def _steps(value: Any) -> int:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and float(value).is_integer()
        and value >= 1
    )
    if not ok:
        raise ConfigError(f"steps must be an integer >= 1, got {value!r}")
    return int(value)


def _beta(value: Any, lo: float, hi: float, who: str) -> float:
    span = f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g}"
    try:
        beta = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{who} beta must be a number {span}, got {value!r}") from None
    if not math.isfinite(beta) or beta < lo or beta > hi:
        raise ConfigError(f"{who} beta must be a finite number {span}, got {value!r}")
    return beta


# --------------------------------------------------------------------------- objectives
@OBJECTIVES.register("natural")
@dataclass
class Natural:
    """Cross-entropy on clean inputs."""

    passes = 1.0
    """Forward + backward passes per training image and step (for the study's time estimate)."""

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        logits = model(x)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits)


@OBJECTIVES.register("pgd-at")
@dataclass
class PGDAT:
    """PGD adversarial training (Madry et al. 2018): cross-entropy on L∞ PGD examples."""

    eps: float
    alpha: float | None = None  # default eps/4
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        self.eps = _eps(self.eps)
        self.alpha = _alpha(self.alpha)
        self.steps = _steps(self.steps)
        self.random_start = bool(self.random_start)

    def craft(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """The last PGD iterate (Madry's training examples), crafted in eval mode: k passes."""
        with eval_mode(model):
            return pgd_linf_last(
                model, x, y, eps=self.eps, alpha=self.alpha, steps=self.steps,
                random_start=self.random_start, loss="ce", generator=generator,
            )

    @property
    def passes(self) -> float:
        """k attack passes + the training pass, per training image and step."""
        return float(self.steps) + 1.0

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        x_adv = self.craft(model, x, y, generator=generator)
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, adv_logits=logits)


def _kl_to_clean(logits_adv: Tensor, p_clean: Tensor) -> Tensor:
    """Per-sample KL(p_clean ‖ softmax(logits_adv))."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="none").sum(dim=1)


@OBJECTIVES.register("trades")
@dataclass
class TRADES:
    """TRADES (Zhang et al. 2019): CE(clean) + β·KL(p_clean ‖ p_adv), KL with reduction batchmean."""

    eps: float
    beta: float = 6.0
    alpha: float | None = None  # default eps/4
    steps: int = 10

    def __post_init__(self) -> None:
        self.eps = _eps(self.eps)
        self.beta = _beta(self.beta, 0.0, math.inf, "trades")
        self.alpha = _alpha(self.alpha)
        self.steps = _steps(self.steps)

    def craft(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Maximise KL(p_clean ‖ p_adv) from x + 0.001·N(0, 1), as the reference code does.

        In eval mode; the target p_clean comes from one no-grad forward (the reference code
        recomputes it at every step), then k forward + input-gradient passes.
        """
        x = x.detach()
        with eval_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            x_init = x + 0.001 * randn_like(x, generator)
            return pgd_linf_last(
                model, x, p_clean, eps=self.eps, alpha=self.alpha, steps=self.steps,
                loss=_kl_to_clean, x_init=x_init,
            )

    @property
    def passes(self) -> float:
        """k attack passes + the clean / adversarial training pair, per training image and step."""
        return float(self.steps) + 2.0

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        if self.beta == 0:
            return Natural()(model, x, y)
        x_adv = self.craft(model, x, y, generator=generator)
        logits, logits_adv = forward_pair(model, x, x_adv)
        loss_natural = F.cross_entropy(logits, y)
        loss_robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return ObjectiveOutput(loss_natural + self.beta * loss_robust, logits, adv_logits=logits_adv)


@OBJECTIVES.register("fast-at")
@dataclass
class FastAT:
    """Fast adversarial training (Wong et al. 2020): CE on FGSM examples with a random start."""

    eps: float
    alpha: float | None = None  # default 1.25 * eps

    def __post_init__(self) -> None:
        self.eps = _eps(self.eps)
        self.alpha = _alpha(self.alpha)

    def craft(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        with eval_mode(model):
            return fgsm(model, x, y, eps=self.eps, random_start=True, alpha=self.alpha, generator=generator)

    passes = 2.0
    """One FGSM pass + the training pass, per training image and step."""

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        x_adv = self.craft(model, x, y, generator=generator)
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits, adv_logits=logits)


@OBJECTIVES.register("mix")
@dataclass
class Mix:
    """Clean/adversarial mix of Madaan2020 Eq. 6: β·CE(clean) + (1 − β)·CE(adv from ``inner``)."""

    inner: Any  # an adversarial objective (has .craft): PGDAT, TRADES, FastAT
    beta: float  # weight of the clean term, in [0, 1]

    def __post_init__(self) -> None:
        if not isinstance(self.inner, AdversarialObjective):
            raise ConfigError(
                f"mix needs an adversarial inner objective with a craft() method "
                f"(pgd-at, trades, fast-at), got {type(self.inner).__name__}"
            )
        self.beta = _beta(self.beta, 0.0, 1.0, "mix")

    def craft(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.inner.craft(model, x, y, generator=generator)

    @property
    def passes(self) -> float:
        """The inner objective's attack passes + one or two training passes."""
        inner = float(getattr(self.inner, "passes", 2.0)) - 1.0
        return 1.0 if self.beta == 1 else inner + (1.0 if self.beta == 0 else 2.0)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        if self.beta == 1:
            return Natural()(model, x, y)
        x_adv = self.inner.craft(model, x, y, generator=generator)
        if self.beta == 0:
            logits_adv = model(x_adv)
            return ObjectiveOutput(F.cross_entropy(logits_adv, y), logits_adv, adv_logits=logits_adv)
        logits, logits_adv = forward_pair(model, x, x_adv)
        loss = self.beta * F.cross_entropy(logits, y) + (1 - self.beta) * F.cross_entropy(logits_adv, y)
        return ObjectiveOutput(loss, logits, adv_logits=logits_adv)


# --------------------------------------------------------------------------- construction
def objective_names() -> list[str]:
    return OBJECTIVES.names()


def _construct(name: str, kwargs: dict[str, Any]) -> Any:
    cls = OBJECTIVES.get(name)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"objective {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(params) or 'nothing'}"
        )
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in kwargs]
    if missing:
        raise ConfigError(f"objective {name!r} needs {', '.join(missing)} (e.g. eps=8/255)")
    return cls(**kwargs)


def build_objective(name: str, **kwargs: Any):
    """Build an objective by registry name, validating every value (bad ones raise ConfigError).

    ``mix`` takes ``beta`` and ``inner`` — an objective instance, or a registry name (default
    ``"pgd-at"``) built from the remaining keyword arguments, e.g.
    ``build_objective("mix", beta=0.5, eps=0.1, steps=10)``.
    """
    key = str(name).lower()
    OBJECTIVES.get(key)  # unknown name -> UnknownNameError listing the choices
    if key == "mix":
        if "beta" not in kwargs:
            raise ConfigError("objective 'mix' needs beta in [0, 1] (weight of the clean loss, Madaan2020 Eq. 6)")
        beta = kwargs.pop("beta")
        inner = kwargs.pop("inner", "pgd-at")
        if isinstance(inner, str):
            if inner.lower() in ("mix", "natural"):
                raise ConfigError(f"mix needs an adversarial inner objective (pgd-at, trades, fast-at), got {inner!r}")
            inner = _construct(inner.lower(), kwargs)
        elif kwargs:
            raise ConfigError(
                f"mix with an inner objective instance takes only inner and beta, got also {', '.join(sorted(kwargs))}"
            )
        return Mix(inner=inner, beta=beta)
    return _construct(key, kwargs)
