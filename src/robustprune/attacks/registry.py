"""The attack registry: name -> function, plus what each attack measures (:class:`AttackInfo`).

Two kinds of attack share one calling convention ``fn(model, x, y, *, ..., generator=None)``:

- ``"budget"``: ``fn(model, x, y, *, eps, ...) -> x_adv`` — the most damaging point found inside
  the ε-ball of ``norm`` (and [0, 1]); robust accuracy at ε = accuracy on ``x_adv``.
- ``"min-norm"``: ``fn(model, x, y, *, ...) -> MinNormResult`` — per sample the smallest
  adversarial perturbation found and its norm, so robust accuracy at every ε comes from one run
  (:func:`~robustprune.attacks.results.robust_accuracy_from_norms`). Given ``eps=`` they also act
  as budget attacks and return ``x_adv`` (the point where its norm ≤ ε, else ``x``), so every
  registered attack can be called as a budget attack.

``extra`` names the optional dependency an adapter needs (``pip install 'robustprune[EXTRA]'``);
without it, calling the attack raises a one-line RobustPruneError that says so. L0 budgets and
norms count pixels (all channels of one spatial location count once) unless ``l0_unit="element"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from robustprune.attacks.adapters import autoattack, bb_l0
from robustprune.attacks.apgd import apgd, apgd_ce, apgd_t
from robustprune.attacks.cw import cw_l2
from robustprune.attacks.fgsm import fgsm
from robustprune.attacks.l0 import greedy_l0
from robustprune.attacks.min_norm import fmn_linf, min_norm_linf
from robustprune.attacks.pgd import cw_linf, pgd_l2, pgd_linf
from robustprune.errors import UnknownNameError
from robustprune.registry import Registry

Norm = Literal["Linf", "L2", "L0"]
Kind = Literal["budget", "min-norm"]


@dataclass(frozen=True)
class AttackInfo:
    """What a registered attack is: its canonical ``name``, the function ``fn``, the ``norm`` its
    budget / result is measured in (``"Linf"``, ``"L2"``, ``"L0"``: L0 counts pixels by default),
    its ``kind`` (``"budget"`` returns ``x_adv``; ``"min-norm"`` returns a ``MinNormResult``) and
    the optional ``extra`` it needs (``None`` for in-house attacks).

    The one description of an attack: the evaluation uses it as is (``EvalAttackInfo`` is this class), through
    :attr:`min_norm`, :meth:`params`, :meth:`accepts` and :meth:`settings_names`."""

    name: str
    fn: Callable[..., object]
    norm: Norm = "Linf"
    kind: Kind = "budget"
    extra: str | None = None

    @property
    def min_norm(self) -> bool:
        """True for a minimal-norm attack (returns per-sample norms)."""
        return self.kind == "min-norm"

    def params(self) -> Mapping[str, inspect.Parameter]:
        """The parameters of ``fn`` (empty when it has no inspectable signature)."""
        try:
            return inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            return {}

    def accepts(self, key: str) -> bool:
        """``fn`` takes the keyword ``key`` (or any keyword)."""
        params = self.params()
        return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def default(self, key: str) -> object:
        """The default of ``fn``'s keyword ``key`` (``None`` when it has none)."""
        p = self.params().get(key)
        return None if p is None or p.default is inspect.Parameter.empty else p.default

    def settings_names(self) -> list[str]:
        """The settings a user may give (every keyword of ``fn`` but model, x, y, eps and generator)."""
        skip = {"model", "x", "y", "eps", "generator"}
        return [k for k, p in self.params().items()
                if k not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


ATTACKS: Registry[Callable[..., object]] = Registry("attack")


class _InfoTable(Mapping[str, AttackInfo]):
    """Read-only, case-insensitive mapping name -> AttackInfo (aliases included)."""

    def __init__(self) -> None:
        self._items: dict[str, AttackInfo] = {}

    def _add(self, key: str, info: AttackInfo) -> None:
        self._items[key.lower()] = info

    def __getitem__(self, name: str) -> AttackInfo:
        key = str(name).lower()
        if key not in self._items:
            raise UnknownNameError(
                f"unknown attack {name!r}; choose one of: {', '.join(sorted(self._items))} "
                "(see `robustprune list attacks`)"
            )
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ATTACK_INFO({', '.join(sorted(self._items))})"


ATTACK_INFO = _InfoTable()


def register_attack(
    name: str,
    fn: Callable[..., object],
    *,
    norm: Norm,
    kind: Kind,
    extra: str | None = None,
    aliases: tuple[str, ...] = (),
    help: str | None = None,
) -> AttackInfo:
    """Add ``fn`` to ``ATTACKS`` (under ``name`` and its aliases) and to ``ATTACK_INFO``."""
    if norm not in ("Linf", "L2", "L0"):
        raise ValueError(f"norm must be Linf, L2 or L0, got {norm!r}")
    if kind not in ("budget", "min-norm"):
        raise ValueError(f"kind must be 'budget' or 'min-norm', got {kind!r}")
    info = AttackInfo(name=name.lower(), fn=fn, norm=norm, kind=kind, extra=extra)
    for key in (name, *aliases):
        ATTACKS.add(key, fn, help=help)
        ATTACK_INFO._add(key, info)
    return info


def unregister_attack(name: str) -> None:
    """Remove ``name`` and every alias of the same attack (for plug-ins and test doubles)."""
    key = name.lower()
    info = ATTACK_INFO._items.get(key)
    if info is None:
        return
    for k in [k for k, v in ATTACK_INFO._items.items() if v is info]:
        ATTACK_INFO._items.pop(k, None)
        ATTACKS._items.pop(k, None)
        ATTACKS._help.pop(k, None)


def get_attack_info(name: str) -> AttackInfo:
    """The :class:`AttackInfo` of ``name`` (aliases resolve to the canonical entry);
    UnknownNameError lists the choices."""
    return ATTACK_INFO[name]


register_attack("fgsm", fgsm, norm="Linf", kind="budget",
                help="FGSM (L∞, one step; random_start=True for FGSM-RS)")
register_attack("pgd", pgd_linf, norm="Linf", kind="budget", aliases=("pgd-linf",),
                help="PGD-L∞ with restarts, worst case per sample (loss ce | cw | dlr)")
register_attack("pgd-l2", pgd_l2, norm="L2", kind="budget",
                help="PGD-L2 with restarts, worst case per sample (loss ce | cw | dlr)")
register_attack("cw-linf", cw_linf, norm="Linf", kind="budget",
                help="CW-L∞: PGD-L∞ on the Carlini-Wagner margin loss")
register_attack("apgd-ce", apgd_ce, norm="Linf", kind="budget",
                help="APGD-CE (Croce2020, in-house): step-size schedule with checkpoints, momentum 0.75")
register_attack("apgd-t", apgd_t, norm="Linf", kind="budget",
                help="APGD-T (Croce2020, in-house): targeted DLR loss over the top n_target_classes (9) classes")
register_attack("apgd", apgd, norm="Linf", kind="budget",
                help="APGD-CE then APGD-T on the survivors (AutoAttack's first two attacks, in-house; the default "
                     "strong attack)")
register_attack("min-norm-linf", min_norm_linf, norm="Linf", kind="min-norm", aliases=("min-norm",),
                help="APGD-based minimal L∞ norm per point (APGD at eps_max, then a per-sample bisection): "
                     "robust accuracy at every eps from one run")
register_attack("fmn-linf", fmn_linf, norm="Linf", kind="min-norm", aliases=("fmn",),
                help="FMN L∞ (Pintor2021): each point's smallest successful eps, robust accuracy at every eps "
                     "from one run")
register_attack("cw-l2", cw_l2, norm="L2", kind="min-norm",
                help="Carlini-Wagner L2, minimal norm with binary search over the constant")
register_attack("l0", greedy_l0, norm="L0", kind="min-norm",
                help="greedy gradient-guided L0 (minimal number of pixels), then pruning")
register_attack("autoattack", autoattack, norm="Linf", kind="budget", extra="autoattack",
                help="official AutoAttack (pyautoattack; version standard | plus | rand | custom)")
register_attack("bb-l0", bb_l0, norm="L0", kind="min-norm", extra="foolbox",
                help="Brendel & Bethge L0 (foolbox 3), started from adversarial points")


def attack_names() -> list[str]:
    """Registered attack names (aliases included)."""
    return ATTACKS.names()


def get_attack(name: str) -> Callable[..., object]:
    """The attack function registered under ``name`` (UnknownNameError lists the choices)."""
    return ATTACKS.get(name)
