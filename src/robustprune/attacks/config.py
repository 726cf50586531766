"""One description of an attack to run: :class:`AttackConfig` (the study's ``AttackSpec`` is this class).

An attack by registry name at one or more budgets, with any setting its function takes. The settings most attacks
share are fields (``steps``, ``restarts``, ``alpha``, ``loss``, ``random_start``); any other keyword of the attack's
function (``c``, ``version``, ``n_target_classes``, ``early_exit`` ...) is accepted as an extra field and checked
against the function's signature. It validates from a dict (a study file's ``{name: apgd, eps: [0.1]}``), from
keywords, or through :meth:`AttackConfig.build` (one-line :class:`~robustprune.errors.ConfigError` on bad input,
for the CLI).

Defaults for a budget attack (applied when the setting is not given): ``steps`` is 20 for an attack whose own
default is fewer (PGD's 10 is a training default, evaluation PGD takes >= 20); ``restarts`` is 1; ``alpha`` stays
unset, and the evaluation then passes Madry's ``2.5 ε / steps`` (the attack functions use the same rule, so a
direct call and an evaluation run take the same step). APGD keeps its own 100 iterations.
"""

from __future__ import annotations

import math
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from robustprune.attacks.registry import AttackInfo, get_attack_info
from robustprune.attacks.results import canonical_norm
from robustprune.errors import ConfigError
from robustprune.utils import parse_eps

DEFAULT_EVAL_STEPS = 20
"""Steps given to a budget attack whose function's own default is fewer (evaluation PGD >= 20 steps)."""

_FIXED = ("name", "eps", "steps", "restarts", "alpha", "loss", "random_start")
_NOT_SETTINGS = ("model", "x", "y", "generator")


#: Settings whose value must lie in an open / half-open interval (beyond "counts are >= 1", "floats are finite").
_RANGES: dict[str, tuple[float, float, str]] = {
    "rho": (0.0, 1.0, "()"), "apgd_rho": (0.0, 1.0, "()"), "square_p_init": (0.0, 1.0, "(]"),
    "momentum": (0.0, 1.0, "[)"), "lr_decay": (0.0, 1.0, "(]"), "gamma_init": (0.0, 1.0, "(]"),
    "gamma_final": (0.0, 1.0, "(]"), "lr": (0.0, math.inf, "()"), "alpha_init": (0.0, math.inf, "()"),
    "alpha_final": (0.0, math.inf, "()"), "overshoot": (1.0, math.inf, "[)"), "initial_const": (0.0, math.inf, "()"),
    "confidence": (0.0, math.inf, "[)"), "eps_max": (0.0, math.inf, "()"),
}
#: Integer settings that may be 0 (everything else typed int counts something and must be >= 1).
_INT_MAY_BE_ZERO = ("seed",)


def _hints(info: AttackInfo) -> dict[str, Any]:
    try:
        return typing.get_type_hints(info.fn)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: leave that setting unchecked
        return {}


def _textual(hint: Any) -> bool:
    """A type a value given as text can be (not a tensor, a callable or an arbitrary object)."""
    text = str(hint)
    return hint is not Any and "Tensor" not in text and "Callable" not in text


def _check_setting(attack: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the attack function's annotated type and range-checked, or ValueError naming the
    setting, what it takes and an example."""
    if value is None or not _textual(hint):
        return value
    try:
        out = TypeAdapter(hint).validate_python(value)
    except ValidationError:
        kind = ("true or false" if hint is bool or str(hint).startswith("bool") else
                "a whole number" if hint is int or "int" in str(hint) else
                "a number" if hint is float or "float" in str(hint) else str(hint))
        raise ValueError(f"attack {attack!r}: {key}={value!r} is not {kind} (e.g. {key}=" +
                         ("true" if kind == "true or false" else "3" if kind == "a whole number" else "0.5")
                         + ")") from None
    if isinstance(out, bool):
        return out
    if isinstance(out, int) and key not in _INT_MAY_BE_ZERO and out < 1:
        raise ValueError(f"attack {attack!r}: {key}={out} does nothing; it counts something and must be >= 1")
    if isinstance(out, int) and out < 0:
        raise ValueError(f"attack {attack!r}: {key}={out} must be >= 0")
    if isinstance(out, float):
        if not math.isfinite(out):
            raise ValueError(f"attack {attack!r}: {key}={out} must be a finite number")
        if key in _RANGES:
            lo, hi, kind = _RANGES[key]
            ok = (out > lo if kind[0] == "(" else out >= lo) and (out < hi if kind[1] == ")" else out <= hi)
            if not ok:
                interval = f"{kind[0]}{lo:g}, {hi:g}{kind[1]}".replace("inf", "∞")
                raise ValueError(f"attack {attack!r}: {key}={out:g} is outside {interval}")
    return out


def check_against_model(spec: Any, num_classes: int, input_shape: typing.Sequence[int]) -> None:
    """Settings that depend on the model and the data, checked before an attack runs: target classes within
    1..classes-1, L2 budgets within the largest possible distance sqrt(d) of [0, 1] images, L0 budgets within the
    number of pixels (or values); a one-line ConfigError that says what to use instead."""
    if isinstance(spec, dict):
        settings = {k: v for k, v in spec.items() if k != "eps"}
        eps_given = spec.get("eps") or ()
    else:
        settings = spec.settings() if hasattr(spec, "settings") else {}
        eps_given = getattr(spec, "eps", None) or ()
    if isinstance(eps_given, (int, float, str)):
        eps_given = [eps_given]
    name = str(settings.get("name") or getattr(spec, "name", "pgd"))
    info = get_attack_info(name)
    for key in ("n_target_classes", "apgd_targets", "fab_targets"):
        t = settings.get(key)
        if t is not None and num_classes >= 2 and int(t) > num_classes - 1:
            raise ConfigError(f"attack {name!r}: {key}={t} but the model has {num_classes} classes, so at most "
                              f"{num_classes - 1} other classes can be targets; use {key}=1..{num_classes - 1}")
    norm = effective_norm(info, settings)
    eps = [float(parse_eps(e)) for e in eps_given]
    d = 1
    for s in input_shape:
        d *= int(s)
    eps_max = settings.get("eps_max")
    if eps_max is not None and norm in ("Linf", "L2"):
        top = 1.0 if norm == "Linf" else math.sqrt(d)
        if float(eps_max) > top:
            raise ConfigError(f"attack {name!r}: eps_max={float(eps_max):g} (the largest {norm} norm searched) is beyond "
                              f"the largest {norm} distance between two {'x'.join(map(str, input_shape))} images in "
                              f"[0, 1] ({top:.4g}); give eps_max <= {top:.4g}, in pixel units (e.g. eps_max=0.3)")
    if norm == "L2":
        top = math.sqrt(d)
        bad = [e for e in eps if e > top]
        if bad:
            raise ConfigError(f"attack {name!r}: L2 budget {bad[0]:g} exceeds the largest distance between two "
                              f"{'x'.join(map(str, input_shape))} images in [0, 1] ({top:.4g}); an L2 budget of a "
                              f"few units (e.g. 0.5 or 1.5) is the usual range")
    elif norm == "L0":
        unit = settings.get("l0_unit", info.default("l0_unit") or "pixel")
        top = d // int(input_shape[0]) if unit == "pixel" and len(input_shape) == 3 else d
        bad = [e for e in eps if e > top]
        if bad:
            raise ConfigError(f"attack {name!r}: L0 budget {bad[0]:g} exceeds the {top} {unit}s of an image")


def effective_norm(info: AttackInfo, settings: dict[str, Any]) -> str:
    """The norm a run measures: the attack's, unless it takes a ``norm`` setting (AutoAttack) that is set."""
    p = settings.get("norm")
    if p is None or "norm" not in info.params():
        return info.norm
    return canonical_norm(p)


class AttackConfig(BaseModel):
    """An attack by registry name at one or more budgets with any settings its function takes.

    ``eps``: budgets in pixel units (``"8/255"`` allowed); empty: the dataset's default L∞ ε. L∞ budgets lie in
    (0, 1]; L2 / L0 budgets are > 0. Every setting given must be a keyword of the attack's function.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = "pgd"
    eps: tuple[float, ...] = ()
    """Budgets in pixel units; empty: the dataset's default L∞ ε."""
    steps: int | None = Field(None, ge=1, le=100_000)
    """Iterations (budget attacks: 20 when the attack's own default is fewer; APGD keeps its 100)."""
    restarts: int | None = Field(None, ge=1, le=1000)
    alpha: float | None = Field(None, gt=0)
    """Absolute step size; None: 2.5 ε / steps (Madry et al.)."""
    loss: str | None = None
    random_start: bool | None = None

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, (int, float, str)):
            v = [v]
        out = []
        for e in v:
            try:
                out.append(float(parse_eps(e)))
            except (TypeError, ValueError, ZeroDivisionError):
                raise ValueError(f"eps {e!r} is not a number such as 0.1 or 8/255") from None
        return tuple(out)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        info = get_attack_info(str(data.get("name", "pgd")))  # UnknownNameError lists the attacks
        hints = _hints(info)
        for key in list(data):
            if key not in _FIXED and key not in _NOT_SETTINGS and key in hints and info.accepts(key):
                data[key] = _check_setting(info.name, key, data[key], hints[key])
        if not info.min_norm:
            if info.accepts("steps") and data.get("steps") is None:
                own = info.default("steps")
                if not isinstance(own, int) or own < DEFAULT_EVAL_STEPS:
                    data["steps"] = DEFAULT_EVAL_STEPS
            if info.accepts("restarts") and data.get("restarts") is None:
                data["restarts"] = 1
        return data

    @model_validator(mode="after")
    def _check(self) -> "AttackConfig":
        info = get_attack_info(self.name)
        settings = self.settings()
        norm = effective_norm(info, settings)
        for e in self.eps:
            if not math.isfinite(e) or e <= 0:
                raise ValueError(f"attack {self.name!r}: budgets must be > 0, got {list(self.eps)}")
            if norm == "Linf" and e > 1:
                raise ValueError(f"attack {self.name!r}: attack budgets must lie in (0, 1] (pixel units, e.g. "
                                 f"8/255); got {list(self.eps)}")
        names = info.settings_names()
        for k in settings:
            if k == "name":
                continue
            if k in _NOT_SETTINGS or not info.accepts(k):
                raise ValueError(f"attack {self.name!r} has no setting {k!r}; its settings are: "
                                 + (", ".join(names) or "none"))
        return self

    # ------------------------------------------------------------------------------------------- views
    def settings(self) -> dict[str, Any]:
        """The settings that define the attack (everything but ε, unset ones left out), with its name."""
        return {k: v for k, v in self.model_dump().items() if k != "eps" and v is not None}

    @property
    def options(self) -> dict[str, Any]:
        """The settings without the name: the keyword arguments the attack is called with (ε aside)."""
        return {k: v for k, v in self.settings().items() if k != "name"}

    @property
    def info(self) -> AttackInfo:
        return get_attack_info(self.name)

    @classmethod
    def build(cls, name: str, eps: Any = (), **options: Any) -> "AttackConfig":
        """Validated config; bad input raises a one-line :class:`ConfigError` (unknown attacks raise
        ``UnknownNameError`` listing the choices)."""
        for k in options:
            if k in _NOT_SETTINGS:
                raise ConfigError(f"attack {name!r}: {k!r} is not a setting")
        get_attack_info(name)
        try:
            return cls(name=name, eps=eps, **{k: v for k, v in options.items() if v is not None})
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = str(err.get("msg", exc)).removeprefix("Value error, ")
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
            if loc and loc not in msg and not msg.startswith("attack "):
                msg = f"attack {name!r}: {loc}: {msg}"
            raise ConfigError(msg) from None


__all__ = ["DEFAULT_EVAL_STEPS", "AttackConfig", "check_against_model", "effective_norm"]
